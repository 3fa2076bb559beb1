"""The README stays true: its feature matrix is generated, and its examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_feature_matrix_matches_the_capability_tables() -> None:
    from autoquant import capability_table

    text = README.read_text()
    block = re.search(
        r"<!-- capability-table:start -->\n(.*?)\n<!-- capability-table:end -->", text, re.S
    )
    assert block, "README lost its generated feature matrix"
    assert block.group(1).strip() == capability_table().strip(), (
        "README's feature matrix is stale: paste the output of "
        "`python -c 'import autoquant; print(autoquant.capability_table())'`"
    )


_EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", _EXAMPLES, ids=[f"example{i}" for i in range(len(_EXAMPLES))])
def test_readme_example_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
