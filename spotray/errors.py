"""The errors spotray shows to people: one line each, with the exit code they deserve."""


class SpotrayError(Exception):
    """A problem the user can fix; the CLI prints it as one line, no traceback."""

    exit_code = 1


class ConfigError(SpotrayError):
    """The job config (or a command-line value) is invalid."""

    exit_code = 2


class CheckpointMismatchError(SpotrayError):
    """The run's checkpoints were written for another model shape than the config's."""

    exit_code = 2


class WorkloadError(SpotrayError):
    """The workload the config names cannot be imported, built or run."""

    exit_code = 2


class TrainingStopped(SpotrayError):
    """The run stopped on its own: a step's loss or gradient norm was not finite."""

    exit_code = 1


class Interrupted(SpotrayError):
    """The user stopped the run (Ctrl-C); running the same command again resumes it."""

    exit_code = 130
