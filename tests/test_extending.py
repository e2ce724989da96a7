"""The worked examples of docs/extending.md run as written, each in a fresh interpreter
(registering a format must not leak into the other tests), and each stays under 60 lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text()))


EXAMPLES = ["strategy", "command_line", "module", "module_flags", "format"]


def test_the_doc_has_the_five_examples():
    assert set(examples()) == set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    code = examples()[name]
    assert len(code.strip().splitlines()) < 60, f"the {name} example grew past 60 lines"
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{name} example failed:\n{run.stdout}\n{run.stderr}"
