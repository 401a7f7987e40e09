"""benchmarks/encoder.py --runtime-only: the shipped network and its K=T twin in torch and OpenVINO through
the service's runners, for a fraction of a second at batch 1 (the JSON it writes); and the f32 peak per
core it reads off /proc/cpuinfo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import encoder as bench
from service.encoding.inference import supports_bf16

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9654
cpu MHz\t\t: 2400.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9654
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_bf16
"""


def test_the_f32_peak_follows_the_flags_and_the_clock() -> None:
    zen4 = bench.f32_peak(ZEN4)
    assert (zen4["isa"], zen4["flops_per_cycle_per_core"], zen4["clock_mhz"]) == ("avx512f", 32, 2500.0)
    assert zen4["gflops_per_core"] == pytest.approx(80.0) and "double-pumped" in zen4["assumption"]
    intel = bench.f32_peak(ZEN4.replace("AuthenticAMD", "GenuineIntel").replace("cpu family\t: 25", "cpu family\t: 6"))
    assert intel["flops_per_cycle_per_core"] == 64 and intel["gflops_per_core"] == pytest.approx(160.0)
    avx2 = bench.f32_peak(ZEN4.replace(" avx512f avx512_bf16", "").replace("cpu MHz\t\t: 2400.000\n", ""), 3000.0)
    assert (avx2["isa"], avx2["flops_per_cycle_per_core"], avx2["clock_mhz"]) == ("avx2+fma", 32, 2600.0)
    no_clock = bench.f32_peak(ZEN4.replace("cpu MHz", "bogomips"), lscpu_max_mhz=3000.0)
    assert no_clock["clock_from"] == "lscpu" and no_clock["gflops_per_core"] == pytest.approx(96.0)
    here = bench.this_machines_peak()
    assert here["gflops_per_core"] > 0 and here["assumption"]


@pytest.mark.slow
def test_runtime_only_writes_the_serving_runtime_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRCA_BATCH_SIZE", "1")  # the service batch size: batch 1 only, for speed
    out = tmp_path / "encoder-runtime.json"
    bench.main(["--runtime-only", "--seconds", "0.05", "--threads", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("python -m benchmarks.encoder") and set(doc["results"]) == {"runtime"}
    rt = doc["results"]["runtime"]
    assert rt["network"] == "drca-lite0-224" and rt["threads"] == 1 and rt["batches"] == [1]
    runtimes = {"torch", "openvino_f32", "openvino_bf16"} if supports_bf16() else {"torch", "openvino_f32"}
    assert set(rt["runs"]) == {"batch_1"} and set(rt["runs"]["batch_1"]) == {"K4", "K8"}
    for net, runs in rt["runs"]["batch_1"].items():
        assert set(runs) == runtimes, net
        for name, run in runs.items():
            assert run["iterations"] >= 3
            for key in ("wall_ms_per_clip", "cpu_ms_per_clip", "clips_per_s", "gflops_per_core_wall",
                        "gflops_per_cpu_second", "peak_fraction_wall", "peak_fraction_cpu"):
                assert run[key] > 0, (net, name, key)
            assert ("note" in run) == (name == "openvino_bf16")
    assert rt["speedup_cpu"]["batch_1"] > 0 and rt["speedup_wall"]["batch_1"] > 0
    assert set(rt["k4_vs_k8"]) == runtimes
    assert all(r["batch_1"]["cpu"] > 0 and r["batch_1"]["wall"] > 0 for r in rt["k4_vs_k8"].values())
    assert rt["gflops_per_clip"]["K8"] > rt["gflops_per_clip"]["K4"] > 0
    assert rt["k4_vs_k8_implied_by_flops"] == pytest.approx(rt["gflops_per_clip"]["K8"] / rt["gflops_per_clip"]["K4"])
    assert rt["peak"]["gflops_per_core"] > 0


def test_the_split_benchmark_times_k4_against_k8_at_each_split(tmp_path: Path) -> None:
    """benchmarks/encoder_split.py: at the shipped split its FLOPs ratio is the runtime benchmark's (the same
    two networks); an earlier split puts more of the stem after the DCCM, so K=4 saves more of K=8's MACs."""
    from benchmarks import encoder_split

    out = tmp_path / "split.json"
    assert encoder_split.main(["--splits", "5,1", "--seconds", "0.1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    five, one = res["splits"]["5"], res["splits"]["1"]
    assert res["shipped_split"] == 5 and five["passes"] >= 1 and one["passes"] >= 1
    runtime = json.loads((bench.RESULTS / "encoder-runtime.json").read_text())["results"]["runtime"]
    assert five["flops_ratio"] == pytest.approx(runtime["k4_vs_k8_implied_by_flops"], rel=1e-3)
    assert one["flops_ratio"] > five["flops_ratio"] > 1
    assert all(v > 0 for r in (five, one) for v in r["cpu_ms_per_clip"].values())
