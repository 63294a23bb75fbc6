"""bench/cuda_resources.py: parsing ptxas -v output into per-kernel records (the compile itself
needs an nvcc and is not run here)."""

from bench.cuda_resources import demangle, parse_ptxas

LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN48_GLOBAL__N__53edfc72_15_delta_decode_cu_ef104e6212apply_kernelINS_4BF16ELi2ELb1EEEvPKNT_1EElPS3_lPKflS5_lPKliPKiSC_SC_iibbbNS_6FieldsE' for 'sm_90'
ptxas info    : Function properties for _ZN48_GLOBAL__N__53edfc72_15_delta_decode_cu_ef104e6212apply_kernelINS_4BF16ELi2ELb1EEEv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 126 registers, used 1 barriers, 2512 bytes smem
ptxas info    : Compiling entry function '_ZN48_GLOBAL__N__53edfc72_15_delta_decode_cu_ef104e6213shrink_kernelINS_3F16EEEvPKNT_1EElPflPKliPKiSA_SA_iibNS_6FieldsE' for 'sm_90'
ptxas info    : Function properties for _ZN48_GLOBAL__N__53edfc72_15_delta_decode_cu_ef104e6213shrink_kernelINS_3F16EEEv
    40 bytes stack frame, 52 bytes spill stores, 84 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 40 bytes cumulative stack size, 2512 bytes smem
"""


def test_parse_ptxas():
    rows = parse_ptxas(LOG)
    assert rows == [
        {"kernel": "apply_kernel<BF16, NR=2, fused>", "arch": "sm_90", "registers": 126, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 2512},
        {"kernel": "shrink_kernel<F16>", "arch": "sm_90", "registers": 80, "stack": 40, "spill_stores": 52, "spill_loads": 84, "smem": 2512},
    ]


def test_demangle_leaves_other_names():
    assert demangle("_Z6kernelPf") == "_Z6kernelPf"
