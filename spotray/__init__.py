"""spotray: elastic, preemption-safe PyTorch training on AWS spot GPUs with Ray.

The public API is `Workload`: subclass it with your model, data and loss, and name it in
the job config (`workload.entrypoint: my_pkg.module:MyWorkload`).
"""

from spotray.workload import Workload

__all__ = ["Workload"]
__version__ = "0.1.0"
