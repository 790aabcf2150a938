"""Prepare the data sets the codec is trained and evaluated on.

    python datasets/prepare.py kodak  [--dest .data/kodak]   # verify ../shared copy, or download
    python datasets/prepare.py train  [--dest .data/train] [--max-mib 30]   # copy the training crops for a GPU job
    python datasets/prepare.py train  --dest .data/train-rest --rest-of .data/train   # the crops left out
    python datasets/prepare.py frames [--dest .data/frames] [--every 8]   # stills from the test clips

Kodak is checked against datasets/kodak.json (sha256 of every file); a missing or wrong file is
fetched from the manifest's URL when the network allows. The training crops exist only in the
project's shared folder (research licences, see its README); `train` copies them into a git-ignored
folder of the repo, which a device command then carries; --max-mib keeps an evenly spread subset
when the repo and the data together would exceed what a device call carries (64 MiB); --rest-of
copies the crops such a subset left out, for a second call to carry to the same (warm) machine.
`frames` writes every Nth frame of the shared test clips as PNG: images that no model trained on,
to choose between weights without looking at Kodak (tools/compare_weights.py).
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


def prepare_train(dest: Path, max_mib: float | None = None, rest_of: Path | None = None) -> None:
    src = SHARED / "train"
    if not src.is_dir():
        raise SystemExit(f"{src} is not here: the training crops live only in the project's shared folder")
    if dest.exists():
        shutil.rmtree(dest)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if rest_of is not None:
        files = [p for p in files if not (rest_of / p.relative_to(src)).exists()]
    total = sum(p.stat().st_size for p in files)
    keep = files
    if max_mib is not None and total > max_mib * 2**20:
        # Every image file whose running share crosses a step of the kept fraction: an even spread
        # over the sources; READMEs and licences always stay. Crops differ in size, so the fraction
        # shrinks until the subset fits.
        fraction = max_mib * 2**20 / total
        while True:
            keep = [p for i, p in enumerate(files) if p.suffix != ".webp" or int((i + 1) * fraction) > int(i * fraction)]
            if sum(p.stat().st_size for p in keep) <= max_mib * 2**20:
                break
            fraction *= 0.99
    for p in keep:
        target = dest / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    count = sum(1 for p in dest.rglob("*.webp"))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"train: {count} crops, {size / 2**20:.1f} MiB in {dest}", file=sys.stderr)


def prepare_frames(dest: Path, every: int) -> None:
    import av  # here: only this step reads video

    src = SHARED / "video"
    clips = sorted(src.glob("*.mkv"))
    if not clips:
        raise SystemExit(f"no clips in {src}: the test clips live only in the project's shared folder")
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for clip in clips:
        with av.open(str(clip)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % every == 0:
                    frame.to_image().convert("RGB").save(dest / f"{clip.stem}-{i:03d}.png")
                    count += 1
    print(f"frames: {count} from {len(clips)} clips in {dest}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["kodak", "train", "frames"])
    ap.add_argument("--dest", type=Path, help="destination folder (default: .data/<dataset>)")
    ap.add_argument("--max-mib", type=float, help="train: keep an evenly spread subset of at most this size")
    ap.add_argument("--rest-of", type=Path, help="train: only the crops that this earlier subset lacks")
    ap.add_argument("--every", type=int, default=8, help="frames: keep every Nth frame of each clip")
    args = ap.parse_args()
    dest = args.dest or ROOT / ".data" / args.dataset
    if args.dataset == "kodak":
        prepare_kodak(dest)
    elif args.dataset == "train":
        prepare_train(dest, args.max_mib, args.rest_of)
    else:
        prepare_frames(dest, args.every)


if __name__ == "__main__":
    main()
