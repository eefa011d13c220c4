"""Print a short SHA-256 of each checkpoint's weights (names, dtypes, shapes and bytes), to show that
two runs gave bitwise the same weights.

    python -m scripts.weights_digest checkpoints/lenet5.pt runs/*/lenet5.pt
"""

import hashlib
from pathlib import Path

from support.cli import CliParser, one_line, print_results, run_cli

from helper import load_checkpoint


def digest(path: Path) -> str:
    weights = load_checkpoint(path).state_dict
    h = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].contiguous()
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    p = CliParser(__doc__)
    p.add_argument("weights", type=Path, nargs="+", help="checkpoints to fingerprint")
    lines = [one_line(f"{digest(path)}  {path}") for path in p.parse_args(argv).weights]
    print_results("\n".join(lines))  # the digests are the product: a closed stdout is an error, not silence


if __name__ == "__main__":
    run_cli(main)
