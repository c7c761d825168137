from vlkernels.train.cli import main, run  # noqa: F401 - main: the trainer's entry; run: it, then the exit

if __name__ == "__main__":
    run()
