"""``python -m ablations.mirror URI DEST``: bring a run folder mirrored under a remote ``--storage`` down to this
machine (``ablations.store.mirror``), with no AWS CLI."""
from __future__ import annotations

import sys
from pathlib import Path

from ablations.store.mirror import Mirror, pull


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pipeline.errors import one_line

    p = argparse.ArgumentParser(prog="python -m ablations.mirror",
                                description="bring a run folder mirrored by --storage down to this machine")
    p.add_argument("uri", help="the mirrored run folder: <--storage>/<run name>, e.g. s3://BUCKET/ablations/full")
    p.add_argument("dest", help="the local folder to write it into (created; files there are replaced)")
    args = p.parse_args(argv)
    try:
        if not Mirror(Path(args.dest), args.uri).exists():
            raise FileNotFoundError(f"no run folder at {args.uri} (no run.json there)")
        n = pull(args.uri, Path(args.dest))
    except Exception as e:  # a bad URI, no credentials, access denied, nothing there
        print(f"error: {args.uri}: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{n} files from {args.uri} in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
