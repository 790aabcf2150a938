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
//  * A payload is never empty: finish() strips trailing zero bytes but keeps the first byte, so a
//    payload of more than one byte ends in a non-zero byte.
//  * End of a payload: the decoder reads 4 bytes ahead and one more for each byte the encoder shifted
//    out, so after the last symbol it has asked for exactly the 4 + S bytes of the encoder's unstripped
//    output; the last 4 of them are the value finish() picked. Decoder::at_end() checks both (every
//    byte read, and the last 4 bytes read are finish()'s choice for the final interval): together they
//    hold exactly when the payload is the encoder's output for the symbols decoded, byte for byte.
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

// Corrupt data: the payload cannot be what an encoder wrote (bitstream.coder maps it to BitstreamError).
struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Caller misuse: invalid CDF tables or rows, symbols or indexes out of range, use after finish/end.
struct UsageError : std::runtime_error {
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
  // leading byte (always 0: low + range never exceeds 2^32 at the top) and the trailing zeros, all
  // but the first byte: a payload is never empty (b"\0" is the stream of no information).
  std::string finish() {
    low_ = final_value(low_, range_);
    for (int i = 0; i < 5; ++i) shift_low();
    std::string s(out_.begin() + 1, out_.end());
    while (s.size() > 1 && s.back() == 0) s.pop_back();
    return s;
  }

  // The value in [low, low + range) with the most trailing zero bits (the smallest of those). Its
  // choice is the same for low and low + 2^32, so the decoder can repeat it from low mod 2^32.
  static uint64_t final_value(uint64_t low, uint32_t range) {
    for (int k = 32; k >= 0; --k) {
      const uint64_t mask = (1ull << k) - 1;
      const uint64_t v = (low + mask) & ~mask;
      if (v >= low && v < low + range) return v;
    }
    return low;  // not reached: k = 0 gives v = low
  }

  // A snapshot, to undo a call that failed part way (the output only grows, so its size suffices).
  struct State {
    uint64_t low, cache_size;
    uint32_t range;
    uint8_t cache;
    size_t out_size;
  };
  State state() const { return {low_, cache_size_, range_, cache_, out_.size()}; }
  void restore(const State& st) {
    low_ = st.low;
    cache_size_ = st.cache_size;
    range_ = st.range;
    cache_ = st.cache;
    out_.resize(st.out_size);
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
  // `data` must outlive the decoder (the binding owns a copy).
  Decoder(const uint8_t* data, size_t size) : data_(data), size_(size) {
    for (int i = 0; i < 4; ++i) code_ = (code_ << 8) | next();
  }

  // The position of the next symbol in [0, TOTAL); follow with consume().
  inline uint32_t target() {
    r_ = range_ >> PRECISION;
    const uint32_t v = code_ / r_;
    if (v < TOTAL) return v;
    bad_ = true;  // only a corrupt stream lands past TOTAL
    return TOTAL - 1;
  }

  // Requires start <= target() < start + freq <= TOTAL (the caller checks it).
  inline void consume(uint32_t start, uint32_t freq) {
    code_ -= r_ * start;
    range_ = r_ * freq;
    normalize();
  }

  inline uint32_t decode_bits(int nbits) {
    r_ = range_ >> nbits;
    uint32_t v = code_ / r_;
    const uint32_t limit = (1u << nbits) - 1;
    if (v > limit) {
      v = limit;
      bad_ = true;
    }
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

  // Bytes asked for so far, past the end of the buffer included (those read as zeros).
  size_t bytes_read() const { return pos_; }
  size_t size() const { return size_; }

  // Whether the payload is exactly the encoder's output for the symbols decoded so far: every byte
  // was read, no step left the interval (bad_), and the last 4 bytes read (zeros past the end) are
  // the value Encoder::finish() picks in the final interval [low, low + range), low = window - code.
  // Given those, the decoded value equals the encoder's at every step, so the bytes are the same.
  bool at_end() const {
    if (bad_ || pos_ < size_ || code_ >= range_) return false;
    uint32_t window = 0;
    for (size_t p = pos_ - 4; p < pos_; ++p) window = (window << 8) | (p < size_ ? data_[p] : 0u);
    const uint32_t low = window - code_;  // mod 2^32; the encoder's carry bit does not change the choice
    return static_cast<uint32_t>(Encoder::final_value(low, range_)) == window;
  }

  struct State {
    size_t pos;
    uint32_t range, code;
    bool bad;
  };
  State state() const { return {pos_, range_, code_, bad_}; }
  void restore(const State& st) {
    pos_ = st.pos;
    range_ = st.range;
    code_ = st.code;
    bad_ = st.bad;
  }

 private:
  inline uint8_t next() {
    const uint8_t b = pos_ < size_ ? data_[pos_] : 0;
    ++pos_;
    return b;
  }
  inline void normalize() {
    while (range_ < TOP) {
      code_ = (code_ << 8) | next();
      range_ <<= 8;
    }
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint32_t range_ = 0xFFFFFFFFu;
  uint32_t code_ = 0;
  uint32_t r_ = 0;
  bool bad_ = false;  // a step clamped a target: the stream is not an encoder's
};

// Largest s in [0, n) with cdf[s] <= v, given cdf[0] <= v and cdf non-decreasing (branch-free binary
// search). Whatever the values, it reads only cdf[0 .. n-1] (base + n never grows) and returns s < n.
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
