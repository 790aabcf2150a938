"""Prepare the data sets the codec is trained and evaluated on.

    python datasets/prepare.py kodak  [--dest .data/kodak]   # verify ../shared copy, or download
    python datasets/prepare.py train  [--dest .data/train]   # copy ../shared/datasets/train for a GPU job

Kodak is checked against datasets/kodak.json (sha256 of every file); a missing or wrong file is
fetched from the manifest's URL when the network allows. The training crops exist only in the
project's shared folder (research licences, see its README); `train` copies them into a git-ignored
folder of the repo, which a device command then carries.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "datasets"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_kodak(dest: Path) -> None:
    manifest = json.loads((HERE / "kodak.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(manifest["files"], 1):
        target = dest / entry["name"]
        shared = SHARED / "kodak" / entry["name"]
        if not (target.exists() and sha256(target) == entry["sha256"]):
            if shared.exists() and sha256(shared) == entry["sha256"]:
                shutil.copyfile(shared, target)
            else:
                print(f"fetching {entry['url']}", file=sys.stderr)
                tmp = target.with_suffix(".part")
                urllib.request.urlretrieve(entry["url"], tmp)
                if sha256(tmp) != entry["sha256"]:
                    tmp.unlink()
                    raise SystemExit(f"{entry['name']}: checksum mismatch after download")
                tmp.replace(target)
        print(f"\r[{i}/{len(manifest['files'])}] {entry['name']} ok", end="", file=sys.stderr)
    print(f"\nkodak: {len(manifest['files'])} images verified in {dest}", file=sys.stderr)


def prepare_train(dest: Path) -> None:
    src = SHARED / "train"
    if not src.is_dir():
        raise SystemExit(f"{src} is not here: the training crops live only in the project's shared folder")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    count = sum(1 for p in dest.rglob("*.webp"))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"train: {count} crops, {size / 2**20:.1f} MiB in {dest}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["kodak", "train"])
    ap.add_argument("--dest", type=Path, help="destination folder (default: .data/<dataset>)")
    args = ap.parse_args()
    dest = args.dest or ROOT / ".data" / args.dataset
    (prepare_kodak if args.dataset == "kodak" else prepare_train)(dest)


if __name__ == "__main__":
    main()
