"""open_clip_train on vlkernels' losses: change one word of the launch command.

    python -m open_clip_train.main  --model ViT-B-32 --train-data ... --batch-size 256 ...
    python -m vlkernels.open_clip_train --model ViT-B-32 --train-data ... --batch-size 256 ...
    torchrun --nproc_per_node 8 -m vlkernels.open_clip_train ...      (or: vlkernels-open-clip-train ...)

The arguments are open_clip_train.main's, passed through unchanged: same logs, checkpoints and metrics,
the losses (CLIP, SigLIP, CoCa, distillation) built by vlkernels (``vlkernels.patch_open_clip``). Our own
option, removed before open_clip parses the arguments:

    --vlkernels-impl {auto,triton,torch,naive}   the losses' impl (default auto)
"""

from __future__ import annotations

import sys

from vlkernels.integrations import patch_open_clip

IMPL_OPTION = "--vlkernels-impl"


def split_argv(argv: list[str]) -> tuple[str, list[str]]:
    """(impl, open_clip's arguments): ``--vlkernels-impl X`` / ``--vlkernels-impl=X`` taken out."""
    impl, rest = "auto", []
    args = iter(argv)
    for arg in args:
        if arg == IMPL_OPTION:
            impl = next(args, None)
            if impl is None:
                raise SystemExit(f"{IMPL_OPTION} needs a value: auto, triton, torch or naive")
        elif arg.startswith(IMPL_OPTION + "="):
            impl = arg.partition("=")[2]
        else:
            rest.append(arg)
    return impl, rest


def main(argv: list[str] | None = None) -> None:
    """Run ``open_clip_train.main.main(argv)`` with open_clip's losses swapped for vlkernels'."""
    impl, rest = split_argv(sys.argv[1:] if argv is None else list(argv))
    with patch_open_clip(impl=impl):
        from open_clip_train import main as open_clip_main

        # open_clip's own entry point ignores main's return value (exit status 0): so do we.
        open_clip_main.main(rest)


if __name__ == "__main__":
    main()
