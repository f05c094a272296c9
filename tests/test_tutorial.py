"""The tutorial in docs/spec-language.md runs as written."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "spec-language.md"


def _blocks(text: str) -> list[tuple[str, str]]:
    tutorial = text[text.index("## Part 2"):]
    return re.findall(r"```(bash|python)\n(.*?)```", tutorial, flags=re.S)


def test_tutorial_commands_run_as_written(tmp_path):
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    env_path = str(Path(sys.executable).parent)
    blocks = _blocks(DOC.read_text())
    assert [kind for kind, _ in blocks] == ["bash", "bash", "bash", "bash", "python", "bash"]
    outputs = []
    for kind, code in blocks:
        if kind == "python":
            name = code.splitlines()[0].removeprefix("# ").strip()
            (tmp_path / name).write_text(code)
            continue
        result = subprocess.run(["bash", "-ec", code], cwd=tmp_path, capture_output=True,
                                text=True, timeout=900,
                                env={"PATH": f"{env_path}:/usr/bin:/bin",
                                     "PYTHONPATH": str(tmp_path)})
        assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    assert (tmp_path / "my_optimizers" / "my_adafactor.py").exists()
    assert "passed, 0 failed" in outputs[3]
    assert re.search(r"loss \d+\.\d+ -> \d+\.\d+", outputs[-1])
    spec = (tmp_path / "my_adafactor.yaml").read_text()
    assert spec.index("if: has(beta_1)") < spec.index("rms(u) / clip_threshold")
