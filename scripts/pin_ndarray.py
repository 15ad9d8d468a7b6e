#!/usr/bin/env python3
"""Keep one ndarray in the build: point hdf5-metno at the ndarray that linfa uses.

hdf5-metno accepts ndarray 0.15..0.17 and cargo picks 0.17, while linfa 0.8 needs 0.16; two
copies would make HDF5 arrays and linfa arrays different types. `cargo update -p` refuses the
change (ort lists ndarray 0.17 as an optional dependency), so the lock entry is edited here.
Run after any `cargo update` or dependency change; `cargo tree -d` must then list no ndarray.
"""
import re
import sys
from pathlib import Path

lock = Path(sys.argv[1] if len(sys.argv) > 1 else "Cargo.lock")
text = lock.read_text()
versions = re.findall(r'name = "ndarray"\nversion = "([^"]+)"', text)
linfa_side = min(versions, key=lambda v: tuple(map(int, v.split("."))))
start = text.index('name = "hdf5-metno"\n')
end = text.index("[[package]]", start)
block = re.sub(r'"ndarray [0-9.]+"', f'"ndarray {linfa_side}"', text[start:end])
lock.write_text(text[:start] + block + text[end:])
print(f"hdf5-metno -> ndarray {linfa_side} (available: {', '.join(versions)})")
