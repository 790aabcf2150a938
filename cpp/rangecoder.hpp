// A byte-wise range coder over 16-bit integer CDFs (carry-propagating, LZMA-style low/cache).
//
// Invariants, stated once:
//  * A CDF is uint32 values with cdf[0] == 0, cdf[last] == TOTAL == 1 << PRECISION and strictly
//    increasing, so every symbol has frequency >= 1. Symbol s owns [cdf[s], cdf[s+1]).
//  * Between symbols, range lies in [TOP, 2^32): after each step we renormalise by whole bytes,
//    so r = range >> PRECISION >= 2^8 and range = r * freq >= 2^8 never reaches zero.
//  * The encoder's low is 64-bit: bit 32 is a pending carry into bytes already counted in
//    cache/cache_size (the run of 0xFF bytes a carry can ripple through).
//  * The stream is big-endian; the decoder reads zero bytes past the end of its buffer (the encoder
//    strips trailing zeros), so it never reads out of bounds and every loop is bounded by the
//    number of symbols asked for: garbage in gives garbage symbols or an error, never a hang.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace rc {

constexpr int PRECISION = 16;
constexpr uint32_t TOTAL = 1u << PRECISION;
constexpr uint32_t TOP = 1u << 24;
constexpr int ESCAPE_LENGTH_BITS = 6;  // Elias-gamma length prefix of an escaped value, 0..63
constexpr int MAX_ESCAPE_BITS = 40;    // larger escaped magnitudes cannot come from int32 symbols

struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Encoder {
 public:
  // Code the interval [start, start + freq) of TOTAL.
  inline void encode(uint32_t start, uint32_t freq) {
    const uint32_t r = range_ >> PRECISION;
    low_ += static_cast<uint64_t>(r) * start;
    range_ = r * freq;
    while (range_ < TOP) {
      range_ <<= 8;
      shift_low();
    }
  }

  // Code `nbits` (<= 16) raw bits, equiprobable.
  inline void encode_bits(uint32_t value, int nbits) {
    const uint32_t r = range_ >> nbits;
    low_ += static_cast<uint64_t>(r) * value;
    range_ = r;
    while (range_ < TOP) {
      range_ <<= 8;
      shift_low();
    }
  }

  // An escaped magnitude: its bit length in ESCAPE_LENGTH_BITS bits, then its bits below the top one.
  void encode_escape(uint64_t raw) {
    const uint64_t v = raw + 1;
    int n = 63 - __builtin_clzll(v);
    encode_bits(static_cast<uint32_t>(n), ESCAPE_LENGTH_BITS);
    for (int done = 0; done < n; done += 16) {
      const int k = n - done < 16 ? n - done : 16;
      encode_bits(static_cast<uint32_t>((v >> done) & ((1u << k) - 1)), k);
    }
  }

  // Pick the value in [low, low + range) with the most trailing zero bits, emit it, and drop the
  // leading byte (always 0: low + range never exceeds 2^32 at the top) and the trailing zeros.
  std::string finish() {
    for (int k = 32; k >= 0; --k) {
      const uint64_t mask = (1ull << k) - 1;
      const uint64_t v = (low_ + mask) & ~mask;
      if (v >= low_ && v < low_ + range_) {
        low_ = v;
        break;
      }
    }
    for (int i = 0; i < 5; ++i) shift_low();
    std::string s(out_.begin() + 1, out_.end());
    while (!s.empty() && s.back() == 0) s.pop_back();
    return s;
  }

 private:
  inline void shift_low() {
    if (static_cast<uint32_t>(low_) < 0xFF000000u || (low_ >> 32) != 0) {
      const uint8_t carry = static_cast<uint8_t>(low_ >> 32);
      uint8_t byte = cache_;
      do {
        out_.push_back(static_cast<uint8_t>(byte + carry));
        byte = 0xFF;
      } while (--cache_size_ != 0);
      cache_ = static_cast<uint8_t>(low_ >> 24);
    }
    ++cache_size_;
    low_ = (low_ & 0x00FFFFFFu) << 8;
  }

  uint64_t low_ = 0;
  uint32_t range_ = 0xFFFFFFFFu;
  uint8_t cache_ = 0;
  uint64_t cache_size_ = 1;
  std::vector<uint8_t> out_;
};

class Decoder {
 public:
  Decoder(const uint8_t* data, size_t size) : p_(data), end_(data + size) {
    for (int i = 0; i < 4; ++i) code_ = (code_ << 8) | next();
  }

  // The position of the next symbol in [0, TOTAL); follow with consume().
  inline uint32_t target() {
    r_ = range_ >> PRECISION;
    const uint32_t v = code_ / r_;
    return v < TOTAL ? v : TOTAL - 1;  // only a corrupt stream lands past TOTAL
  }

  inline void consume(uint32_t start, uint32_t freq) {
    code_ -= r_ * start;
    range_ = r_ * freq;
    normalize();
  }

  inline uint32_t decode_bits(int nbits) {
    r_ = range_ >> nbits;
    uint32_t v = code_ / r_;
    const uint32_t limit = (1u << nbits) - 1;
    if (v > limit) v = limit;
    code_ -= r_ * v;
    range_ = r_;
    normalize();
    return v;
  }

  uint64_t decode_escape() {
    const int n = static_cast<int>(decode_bits(ESCAPE_LENGTH_BITS));
    if (n > MAX_ESCAPE_BITS) throw DecodeError("corrupt data: escaped value too long");
    uint64_t v = 1ull << n;
    for (int done = 0; done < n; done += 16) {
      const int k = n - done < 16 ? n - done : 16;
      v |= static_cast<uint64_t>(decode_bits(k)) << done;
    }
    return v - 1;
  }


 private:
  inline uint8_t next() { return p_ < end_ ? *p_++ : 0; }
  inline void normalize() {
    while (range_ < TOP) {
      code_ = (code_ << 8) | next();
      range_ <<= 8;
    }
  }

  const uint8_t* p_;
  const uint8_t* end_;
  uint32_t range_ = 0xFFFFFFFFu;
  uint32_t code_ = 0;
  uint32_t r_ = 0;
};

// Largest s in [0, n) with cdf[s] <= v, given cdf[0] <= v (branch-free binary search).
inline uint32_t search(const uint32_t* cdf, uint32_t n, uint32_t v) {
  const uint32_t* base = cdf;
  while (n > 1) {
    const uint32_t half = n / 2;
    base = (base[half] <= v) ? base + half : base;
    n -= half;
  }
  return static_cast<uint32_t>(base - cdf);
}

}  // namespace rc
