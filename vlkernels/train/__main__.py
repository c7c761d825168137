from vlkernels.train.cli import main  # noqa: F401 - the vlkernels-train console script points here

if __name__ == "__main__":
    raise SystemExit(main())
