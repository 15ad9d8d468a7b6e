"""The model description retrain reads and writes, for the Python scripts (src/description.rs
is the Rust side; docs/formats.md lists the keys).

In an ONNX file each key is a metadata entry `retrain.KEY` whose value is text: mean and std
are "a" or "a,b,c", labels comma-joined (`labels:TASK` for each task of a multi-task network),
located_by, heads and head JSON text.  A backbone without such entries may have a sidecar
`MODEL.onnx.json`, a JSON object of the same keys without the prefix.  A description here is a
dict {KEY: text} without the prefix.  This module is the only Python that spells the prefix,
except scripts/quantize.py, which runs outside the checkout and mirrors `write`.

    import description as desc
    d = desc.read(model)                       # {"layout": "NHWC", "height": "299", ...}
    desc.write(model, {**d, "labels": desc.labels_text(["female", "male"])})
"""

import json
from pathlib import Path

PREFIX = "retrain."

# Every key src/description.rs has a field for, in its order (`labels:TASK` stands for one
# key per task); tests/description_schema.rs checks the two lists are the same.
KEYS = [
    "kind",
    "input_name",
    "layout",
    "height",
    "width",
    "mean",
    "std",
    "resize",
    "color",
    "bottleneck",
    "crop",
    "preprocess",
    "pixel_input",
    "located_by",
    "heads",
    "head",
    "labels",
    "labels:TASK",
    "attribute",
    "source",
    "quantized",
    "backbone_sha256",
    "exported_by",
    "converter",
    "tasks",
]

TASK_LABELS = "labels:"

# Keys of other tools' that a description may carry; Rust keeps them as they are
# (`Description::other`). None so far: every key retrain's scripts write is in KEYS.
EXTRA_KEYS = []


def from_entries(entries):
    """The description in metadata entries (a mapping or (key, value) pairs): the `retrain.*`
    ones, without the prefix, in their order; other tools' entries are left out."""
    pairs = entries.items() if hasattr(entries, "items") else entries
    return {k[len(PREFIX):]: v for k, v in pairs if k.startswith(PREFIX)}


def read(model):
    """The description in an onnx.ModelProto's metadata ({} when it has none)."""
    return from_entries((p.key, p.value) for p in model.metadata_props)


def from_session(session):
    """The description in an onnxruntime.InferenceSession's model metadata."""
    return from_entries(session.get_modelmeta().custom_metadata_map)


def sidecar_path(model_path):
    """`MODEL.onnx.json`, the sidecar of `model_path`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def read_file(path):
    """The description of the ONNX file `path`: its metadata, else its sidecar (as
    `Description::of_file`); sidecar values that are not strings become their JSON text."""
    import onnx

    found = read(onnx.load(str(path), load_external_data=False))
    if found:
        return found
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise SystemExit(f"model {path} has no {PREFIX}* metadata and no sidecar {sidecar}")
    keys = json.loads(sidecar.read_text())
    if not isinstance(keys, dict):
        raise SystemExit(f"sidecar {sidecar} is not a JSON object")
    return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in keys.items()}


def check(description):
    """Raises ValueError for a key that is neither in KEYS, nor `labels:TASK`, nor in
    EXTRA_KEYS: a typo would otherwise be kept by Rust and read by nothing."""
    known = set(KEYS) | set(EXTRA_KEYS)
    unknown = [k for k in description if k not in known and not (k.startswith(TASK_LABELS) and len(k) > len(TASK_LABELS))]
    if unknown:
        raise ValueError(f"unknown description keys {unknown} (scripts/description.py KEYS lists the known ones)")


def write(model, description, replace=True):
    """Writes `description` into an onnx.ModelProto's metadata as `retrain.KEY` = str(value),
    in the description's order; None values are left out.  replace: the model's earlier
    `retrain.*` entries go (else they stay, those in `description` taking its value in place).
    Other tools' entries stay first, in their order."""
    check(description)
    entries = {p.key: p.value for p in model.metadata_props if not (replace and p.key.startswith(PREFIX))}
    entries.update({PREFIX + k: str(v) for k, v in description.items() if v is not None})
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    return model


def triple_text(values):
    """mean or std as the scripts write them: each value with `:g`, comma-joined ("0.5,0.5,0.5")."""
    return ",".join(f"{v:g}" for v in values)


def triple(text, default):
    """mean or std read back: one number for all three channels, or three (a sidecar may give a
    JSON list); `default` (a number) when the key is absent (text None)."""
    if text is None:
        return [float(default)] * 3
    values = [float(v) for v in text.strip().lstrip("[").rstrip("]").split(",")]
    if len(values) not in (1, 3):
        raise ValueError(f"'{text}' needs 1 or 3 numbers")
    return values * 3 if len(values) == 1 else values


def labels_text(labels):
    """Class names as a `labels` (or `labels:TASK`) value: comma-joined, in column order."""
    return ",".join(labels)


def split_labels(text):
    return text.split(",")
