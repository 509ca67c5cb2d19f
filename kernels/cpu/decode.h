// Decoding ggml blocks 32 elements at a time into registers, in gguf-py's operation order
// (gguf/quants.py), so that decoded weights are bit-identical to its `dequantize`: every value is one
// float product of the same factors (Q4_K: a product, then a difference; the library is compiled with
// -ffp-contract=off so that never becomes one fused multiply-add).
//
// Each format is a struct with the bytes of a row of `cols` elements, `begin(row, b)`, which reads the
// header (scales) of block b of a row once, and `chunk(block, j, out)`, which writes elements
// [32 j, 32 j + 32) of that block (kChunks of them) as two 16-lane vectors.
#pragma once

#include "simd.h"

namespace dspark {

struct F32Rows {
  static constexpr int kChunks = 1;
  struct Block {
    const float* values;
  };
  static int64_t row_bytes(int64_t cols) { return cols % 32 ? 0 : 4 * cols; }
  static Block begin(const uint8_t* row, int64_t block) { return {reinterpret_cast<const float*>(row) + 32 * block}; }
  static void chunk(const Block& b, int, F32x16 out[2]) {
    out[0] = load(b.values);
    out[1] = load(b.values + 16);
  }
};

struct Q8_0 {  // per 32: half d, int8 q[32]; x = q * d
  static constexpr int kChunks = 1;
  struct Block {
    const uint8_t* q;
    float d;
  };
  static int64_t row_bytes(int64_t cols) { return cols % 32 ? 0 : cols / 32 * 34; }
  static Block begin(const uint8_t* row, int64_t block) {
    const uint8_t* b = row + 34 * block;
    return {b + 2, half_to_float(b)};
  }
  static void chunk(const Block& b, int, F32x16 out[2]) {
    out[0] = mul(from_i8(bytes16(b.q)), splat(b.d));
    out[1] = mul(from_i8(bytes16(b.q + 16)), splat(b.d));
  }
};

struct Q5_0 {  // per 32: half d, uint32 fifth bits, 16 bytes of nibbles (elements 0-15 low, 16-31 high)
  static constexpr int kChunks = 1;
  struct Block {
    const uint8_t* b;
    float d;
  };
  static int64_t row_bytes(int64_t cols) { return cols % 32 ? 0 : cols / 32 * 22; }
  static Block begin(const uint8_t* row, int64_t block) {
    const uint8_t* b = row + 22 * block;
    return {b, half_to_float(b)};
  }
  static void chunk(const Block& blk, int, F32x16 out[2]) {
    const F32x16 d = splat(blk.d), offset = splat(16.0f);
    uint32_t fifth;
    std::memcpy(&fifth, blk.b + 2, 4);
    const __m128i qs = bytes16(blk.b + 6);
    const __m128i bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    const __m128i spread = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int h = 0; h < 2; ++h) {
      // byte i of the half: 0x10 where bit 16 h + i of `fifth` is set
      const __m128i mask = _mm_shuffle_epi8(_mm_cvtsi32_si128(static_cast<int>(fifth >> (16 * h))), spread);
      const __m128i high = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(mask, bit), bit), _mm_set1_epi8(0x10));
      out[h] = mul(d, sub(from_u8(_mm_or_si128(nibbles(qs, h), high)), offset));
    }
  }
};

struct Q4_K {  // per 256: half d, half dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
  static constexpr int kChunks = 8;
  struct Block {
    const uint8_t* q;
    float scale[8], min[8];  // d * scale_j and dmin * min_j of sub-block j
  };
  static int64_t row_bytes(int64_t cols) { return cols % 256 ? 0 : cols / 256 * 144; }
  static Block begin(const uint8_t* row, int64_t block) {
    const uint8_t* b = row + 144 * block;
    const uint8_t* s = b + 4;
    const float d = half_to_float(b), dmin = half_to_float(b + 2);
    Block out{b + 16, {}, {}};
    for (int j = 0; j < 8; ++j) {
      const int scale = j < 4 ? s[j] & 0x3f : (s[j + 4] & 0x0f) | ((s[j - 4] >> 2) & 0x30);
      const int min = j < 4 ? s[j + 4] & 0x3f : (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
      out.scale[j] = d * static_cast<float>(scale);
      out.min[j] = dmin * static_cast<float>(min);
    }
    return out;
  }
  // Sub-block j: the low (even j) or high (odd j) nibbles of bytes 32 (j / 2) ...
  static void chunk(const Block& b, int j, F32x16 out[2]) {
    const F32x16 dj = splat(b.scale[j]), mj = splat(b.min[j]);
    const uint8_t* q = b.q + 32 * (j / 2);
    for (int h = 0; h < 2; ++h) out[h] = sub(mul(dj, from_u8(nibbles(bytes16(q + 16 * h), j % 2))), mj);
  }
};

struct Q6_K {  // per 256: 128 bytes of low nibbles, 64 bytes of 2-bit highs, int8 scales[16], half d
  static constexpr int kChunks = 8;
  struct Block {
    const uint8_t* b;
    float scale[16];  // d * scale_i of elements 16 i ...
  };
  static int64_t row_bytes(int64_t cols) { return cols % 256 ? 0 : cols / 256 * 210; }
  static Block begin(const uint8_t* row, int64_t block) {
    const uint8_t* b = row + 210 * block;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = half_to_float(b + 208);
    Block out{b, {}};
    for (int i = 0; i < 16; ++i) out.scale[i] = d * static_cast<float>(scales[i]);
    return out;
  }
  // Elements 32 i ...: half i / 4, quarter i % 4 of it.
  static void chunk(const Block& blk, int i, F32x16 out[2]) {
    const int half = i / 4, quarter = i % 4;
    for (int e = 0; e < 2; ++e) {
      const __m128i low = nibbles(bytes16(blk.b + 64 * half + 32 * (quarter % 2) + 16 * e), quarter >= 2);
      const __m128i top = _mm_and_si128(_mm_srli_epi16(bytes16(blk.b + 128 + 32 * half + 16 * e), 2 * quarter),
                                        _mm_set1_epi8(0x03));
      const F32x16 q = sub(from_u8(_mm_or_si128(low, _mm_slli_epi16(top, 4))), splat(32.0f));
      out[e] = mul(splat(blk.scale[2 * i + e]), q);
    }
  }
};

}  // namespace dspark
