"""A built wheel carries the presets and cards, and an installed (non-editable) xlm finds them
from any directory, as a checkout does."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs", "__pycache__", "_shipped",
                                     ".pytest_cache", ".hypothesis", "reports")


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_an_installed_wheel_finds_its_shipped_cards_and_presets(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(source)])
    (wheel,) = (tmp_path / "dist").glob("xlm-*.whl")
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)])
    assert not (site / "configs").exists() and not (site / "assets").exists()  # nothing outside the package

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "XLM_USER_ASSET_DIR": str(tmp_path / "no_user_cards")}
    check = (
        "import xlm, xlm.shipped as shipped\n"
        f"site = {str(site)!r}\n"
        "assert xlm.__file__.startswith(site), xlm.__file__\n"
        "assert str(shipped.configs_dir()).startswith(site) and str(shipped.cards_dir()).startswith(site)\n"
        "card = xlm.list_cards()['arlm_star_easy']\n"
        "assert str(card.source_file).startswith(site), card.source_file\n"
        "model = xlm.load_model('arlm_star_easy')\n"
        "print('params', sum(p.numel() for p in model.parameters()))\n"
    )
    out = _run([sys.executable, "-c", check], cwd=elsewhere, env=env).stdout
    assert int(out.split("params ")[1]) > 0

    dumped = _run([sys.executable, "-m", "xlm.recipes.train", "--arch", "arlm_star", "--task", "star_easy",
                   "--dump-config"], cwd=elsewhere, env=env).stdout
    assert "max_steps: 2500" in dumped  # configs/arch/arlm_star.yaml, composed from inside the wheel
    assert "name: star_easy" in dumped
