"""`vaelab` in a child process that accepts a test's fake MNIST files.

The `fake_mnist` fixture makes vaelab accept its files by monkeypatching the official checksums in
`vaelab.data.SPECS`; a monkeypatch cannot reach a child process, so this script applies the same
replacement there and then calls the real entry point, `vaelab.cli.main`. Nothing else differs
from the `vaelab` console script.

    python fakecli.py SUMS_JSON [vaelab arguments ...]
    python fakecli.py SUMS_JSON --each COMMANDS_JSON

SUMS_JSON maps dataset -> role -> {"md5": ..., "gz_md5": ...} (see faultkit.sums_of). With --each,
COMMANDS_JSON is a list of argument lists run one after another in this process (one torch import
for all); it prints {"optimize": sys.flags.optimize, "results": [[exit code, stderr], ...]}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import signal
import sys
from pathlib import Path

from vaelab import data as vdata


def trusted_specs(sums: dict) -> dict[str, vdata.DatasetSpec]:
    """The specs of `vdata.SPECS` named in `sums`, with their checksums replaced by those in `sums`."""
    specs = {}
    for name, roles in sums.items():
        spec = vdata.SPECS[name]
        files = {role: dataclasses.replace(f, **roles[role]) for role, f in spec.files.items()}
        specs[name] = dataclasses.replace(spec, files=files)
    return specs


if __name__ == "__main__":
    # CI may start the test run with SIGINT ignored (a background job); the Ctrl-C tests need the
    # default, which an interactive `vaelab` has.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    vdata.SPECS.update(trusted_specs(json.loads(Path(sys.argv[1]).read_text())))
    from vaelab.cli import main

    if sys.argv[2:3] != ["--each"]:
        main(sys.argv[2:])
        sys.exit(0)
    results = []
    for argv in json.loads(Path(sys.argv[3]).read_text()):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
        results.append([code, err.getvalue()])
    print(json.dumps({"optimize": sys.flags.optimize, "results": results}))
