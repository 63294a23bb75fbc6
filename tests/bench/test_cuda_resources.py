"""bench/cuda_resources.py: parsing ptxas -v output into per-kernel records (the compile itself
needs an nvcc and is not run here)."""

from bench.cuda_resources import demangle, parse_ptxas, parse_symbols

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


def test_parse_symbols_reads_hex_and_decimal_sizes():
    out = """\
     3: 0000000000000000 0x5fd00 FUNC    LOCAL  DEFAULT [<other>: 10]   169 _ZN48_GLOBAL__N__53edfc72_15_delta_decode_cu_ef104e6212apply_kernelINS_4BF16ELi4ELb0EEEvPKNT_1EElPS3_lPKflS5_lPKliPKiSC_SC_iibbbbbNS_6FieldsE
    66: 000000000005f730  1488 FUNC    LOCAL  DEFAULT  169 $__internal_0_$__cuda_sm20_div_s64
    67: 0000000000000000 0x63300 FUNC    LOCAL  DEFAULT [<other>: 10]   170 _ZN48_GLOBAL__N__53edfc72_15_delta_decode_cu_ef104e6214onepass_kernelINS_4BF16ELi2ELi2EEEvPKNT_1EElPS3_lPflS5_lPKliPKiSB_SB_iiibbbbbNS_6FieldsEPiiiiiPx
"""
    assert parse_symbols(out) == {"apply_kernel<BF16, NR=4, unfused>": 0x5FD00, "onepass_kernel<BF16, NR=2, MINB=2>": 0x63300}
