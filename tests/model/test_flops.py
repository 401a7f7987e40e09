import pytest
from typer.testing import CliRunner

from cli.main import app
from model.flops import count_flops
from model.presets import get_preset


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "seed_gflops"), [("drca-s-224", 50.8), ("drca-s-k4-224", 33.6)])
def test_flops_agree_with_the_seed_within_3_percent(preset: str, seed_gflops: float) -> None:
    report = count_flops(get_preset(preset))
    assert report.gmacs == pytest.approx(seed_gflops, rel=0.03)
    if preset == "drca-s-k4-224":
        assert report.ratio == pytest.approx(0.661, abs=0.02)


def test_flops_command_prints_both_conventions() -> None:
    result = CliRunner().invoke(app, ["flops", "drca-cpu-112"])
    assert result.exit_code == 0, result.output
    assert "GFLOPs (MAC)" in result.output and "GFLOPs (x2)" in result.output and "ratio" in result.output


def test_flops_command_rejects_unknown_preset() -> None:
    result = CliRunner().invoke(app, ["flops", "drca-xl"])
    assert result.exit_code == 2
    assert "unknown preset" in result.output
