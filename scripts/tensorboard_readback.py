#!/usr/bin/env python3
"""Reads digitlab's TensorBoard event files back with TensorBoard's own
EventAccumulator and checks them against the run folders' metrics.csv.

    python3 scripts/tensorboard_readback.py ROOT [ROOT ...]

Every folder under each ROOT that holds a metrics.csv (a train run, a sweep's
final run, a transfer backbone) must hold an event file in which every
metrics.csv column but `epoch` is a scalar under the tag digitlab maps it to,
with the float32 of the CSV value at step = epoch, exactly; the confusion matrix
must be an image, and the HParams session start and end records must be there.
Folders with event files but no metrics.csv (a sweep's trials) must parse and
hold scalars and the session start. Exits 1 on any mismatch, 2 when nothing was
found. Needs `pip install tensorboard`.
"""
import csv
import math
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SESSION_START = "_hparams_/session_start_info"
SESSION_END = "_hparams_/session_end_info"


def tag_for(column):
    """digitlab's mapping (crates/train/src/fit/tensorboard.rs `tag_for`):
    `{split}_{metric}` -> `{metric}/{split}`, lr and seconds renamed."""
    for split in ("train", "val", "test"):
        if column.startswith(split + "_"):
            return column[len(split) + 1:] + "/" + split
    return {"lr": "learning_rate", "seconds": "epoch_seconds"}.get(column, column)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def load(run):
    ea = EventAccumulator(run, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea, ea.Tags()


def has_events(d):
    return any(f.startswith("events.out.tfevents.") for f in os.listdir(d))


def check_run(run):
    """A folder with metrics.csv: every value against the events."""
    errors = []
    if not has_events(run):
        return [f"{run}: no events.out.tfevents.* file beside metrics.csv"], 0
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return [f"{run}: metrics.csv has no rows"], 0
    ea, tags = load(run)
    checked = 0
    for column in rows[0]:
        if column == "epoch":
            continue
        tag = tag_for(column)
        if tag not in tags["scalars"]:
            errors.append(f"{run}: scalar {tag!r} (metrics.csv column {column!r}) missing; have {tags['scalars']}")
            continue
        events = ea.Scalars(tag)
        by_step = {e.step: e.value for e in events}
        csv_steps = {int(float(r["epoch"])) for r in rows if r[column] != ""}
        extra = sorted(set(by_step) - csv_steps)
        if extra:
            errors.append(f"{run}: {tag} has steps {extra} that metrics.csv has no value for")
        for row in rows:
            if row[column] == "":
                continue
            want = f32(float(row[column]))
            step = int(float(row["epoch"]))
            got = by_step.get(step)
            checked += 1
            if got is None:
                errors.append(f"{run}: {tag} has no value at step {step}")
            elif not (got == want or (math.isnan(got) and math.isnan(want))):
                errors.append(f"{run}: {tag} at step {step}: events {got!r} vs metrics.csv {row[column]} (f32 {want!r})")
    if "confusion_matrix" not in tags["images"]:
        errors.append(f"{run}: image 'confusion_matrix' missing; have {tags['images']}")
    for t in (SESSION_START, SESSION_END):
        if t not in tags["tensors"]:
            errors.append(f"{run}: HParams record {t!r} missing")
    print(f"{run}: {checked} values of {len(rows[0]) - 1} scalars checked against metrics.csv; "
          f"images {sorted(tags['images'])}; {len(errors)} problems")
    return errors, checked


def check_events_only(run):
    """A folder with event files and no metrics.csv (a sweep trial)."""
    _, tags = load(run)
    errors = []
    if not tags["scalars"]:
        errors.append(f"{run}: event file holds no scalars")
    if SESSION_START not in tags["tensors"]:
        errors.append(f"{run}: HParams record {SESSION_START!r} missing")
    print(f"{run}: {len(tags['scalars'])} scalar tags (no metrics.csv); {len(errors)} problems")
    return errors


def main():
    roots = sys.argv[1:]
    if not roots:
        print(__doc__)
        return 2
    errors, runs, values = [], 0, 0
    for root in roots:
        if not os.path.isdir(root):
            errors.append(f"{root}: not a folder")
            continue
        for d, _, files in sorted(os.walk(root)):
            if "metrics.csv" in files:
                e, n = check_run(d)
                errors += e
                values += n
                runs += 1
            elif has_events(d):
                errors += check_events_only(d)
                runs += 1
    for e in errors:
        print("FAIL", e)
    if runs == 0:
        print("FAIL no run folder (metrics.csv or event file) under", " ".join(roots))
        return 2
    print(f"{runs} run folders, {values} scalar values checked, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
