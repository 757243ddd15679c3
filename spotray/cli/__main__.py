from spotray.cli import run

run()
