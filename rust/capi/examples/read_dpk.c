/*
 * read_dpk: print the tensors of a .dpk file through the deltapack C API.
 *
 *     read_dpk FILE [TENSOR]
 *
 * Output (one item per line, fields separated by single spaces):
 *
 *     abi_version 1
 *     tensor_count N
 *     NAME ENCODING_ID BITS [D0,D1,...] ROWS COLS
 *       segment ROLE LENGTH FNV1A64HEX        (per segment: data | codes, indices, scales, zeros)
 *       f32 SUM V0 V1 V2 V3                   (float raw and quantized encodings only)
 *
 * FNV1A64HEX is the 64-bit FNV-1a hash of the segment's bytes (16 lowercase hex digits), SUM the
 * sum (in double precision, in index order) of the tensor's values as returned by dpk_to_f32,
 * followed by its first (up to) four values; all numbers are printed with "%.6e".
 *
 * Exit status: 0, or the status code of the first failing call (its message goes to stderr as
 * "error: MESSAGE").
 *
 * Build (from the repository root, after `cargo build -p deltapack-capi`):
 *
 *     cc -Irust/capi/include rust/capi/examples/read_dpk.c target/debug/libdeltapack.a \
 *        -lpthread -ldl -lm -o read_dpk
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "deltapack.h"

static const char *const ROLES[] = {"data", "codes", "indices", "scales", "zeros"};

static int fail(int32_t status) {
    fprintf(stderr, "error: %s\n", dpk_last_error());
    return (int)status;
}

static uint64_t fnv1a64(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int is_float_encoding(uint32_t enc) {
    switch (enc) {
    case DPK_ENC_I8:
    case DPK_ENC_U8:
    case DPK_ENC_I32:
    case DPK_ENC_I64:
        return 0;
    default:
        return 1;
    }
}

static int print_tensor(const DpkFile *f, size_t index) {
    DpkTensorInfo info;
    int32_t st = dpk_tensor_info(f, index, &info);
    if (st != DPK_OK) return fail(st);

    printf("%s %" PRIu32 " %" PRIu32 " [", info.name, info.encoding, info.bits);
    for (uint32_t d = 0; d < info.ndim; d++) {
        printf(d ? ",%" PRIu64 : "%" PRIu64, info.shape[d]);
    }
    printf("] %" PRIu64 " %" PRIu64 "\n", info.rows, info.cols);

    for (size_t r = 0; r < sizeof ROLES / sizeof ROLES[0]; r++) {
        const uint8_t *ptr = NULL;
        size_t len = 0;
        st = dpk_tensor_segment(f, index, ROLES[r], &ptr, &len);
        if (st == DPK_ERR_LAYOUT) continue; /* this encoding has no such segment */
        if (st != DPK_OK) return fail(st);
        printf("  segment %s %zu %016" PRIx64 "\n", ROLES[r], len, fnv1a64(ptr, len));
    }

    if (is_float_encoding(info.encoding)) {
        size_t n = (size_t)info.numel;
        float *vals = malloc((n ? n : 1) * sizeof *vals);
        if (!vals) {
            fprintf(stderr, "error: out of memory\n");
            return 1;
        }
        st = dpk_to_f32(f, index, vals, n);
        if (st != DPK_OK) {
            free(vals);
            return fail(st);
        }
        double sum = 0.0;
        for (size_t i = 0; i < n; i++) sum += (double)vals[i];
        printf("  f32 %.6e", sum);
        for (size_t i = 0; i < n && i < 4; i++) printf(" %.6e", (double)vals[i]);
        printf("\n");
        free(vals);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s FILE [TENSOR]\n", argv[0]);
        return 2;
    }
    if (dpk_abi_version() != DPK_ABI_VERSION) {
        fprintf(stderr, "error: library ABI %u, header ABI %u\n", (unsigned)dpk_abi_version(), (unsigned)DPK_ABI_VERSION);
        return 1;
    }

    DpkFile *f = NULL;
    int32_t st = dpk_open(argv[1], DPK_VERIFY_LAZY, &f);
    if (st != DPK_OK) return fail(st);

    size_t count = dpk_tensor_count(f);
    printf("abi_version %" PRIu32 "\n", dpk_abi_version());
    printf("tensor_count %zu\n", count);

    int rc = 0;
    if (argc == 3) {
        size_t index = 0;
        st = dpk_tensor_find(f, argv[2], &index);
        rc = st != DPK_OK ? fail(st) : print_tensor(f, index);
    } else {
        for (size_t i = 0; i < count && rc == 0; i++) rc = print_tensor(f, i);
    }
    fflush(stdout);
    dpk_close(f);
    return rc;
}
