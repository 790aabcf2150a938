// pybind11 face of the range coder: batched numpy in, bytes / numpy out, the GIL released while coding.
// Conversion of values to int32 / uint32 is checked in bitstream/coder.py; this file checks whatever
// it must to stay memory-safe and keep the coder's invariants, whoever calls it:
//  * Threads: each coder object holds a mutex. A call checks shapes and copies what it reads with the
//    GIL held, then releases the GIL, THEN takes the mutex, codes, drops the mutex, and takes the GIL
//    back: the mutex is never waited for while the GIL is held, so two threads cannot deadlock, and
//    one coder object is never used by two threads at once.
//  * Inputs: another Python thread may mutate the arrays once the GIL is released. Indexed CDF tables
//    (small, read many times) are copied into memory the call owns before the GIL is released, then
//    validated. Per-symbol arrays (symbols, indexes, CDF rows (N, K + 1)) are read in place: copying
//    them costs more than coding them (a copy of symbols + indexes took 25 % of encode_indexed's
//    time). Every read is bounded by shapes taken with the GIL held, each value that is checked is
//    read once (load_once) and checked before it is used, so an array changed during the call gives
//    an error or the changed values, never an out-of-bounds access or a broken coder state. The call
//    holds a reference to each array, so its memory stays alive; numpy's explicitly unsafe operations
//    (ndarray.resize(refcheck=False), assigning ndarray.data) from another thread during a call are
//    outside this guarantee.
//  * Errors: rc::UsageError (caller misuse) -> CoderError, rc::DecodeError (corrupt data) ->
//    DecodeError, both ValueError subclasses. A call that fails part way leaves the coder as it was
//    before the call (its state is restored from a snapshot).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <mutex>
#include <string>
#include <vector>

#include "rangecoder.hpp"

namespace py = pybind11;
// No forcecast: numpy casts only safely (int16 -> int32, not int64 -> int32); anything else is a TypeError.
using i32 = py::array_t<int32_t, py::array::c_style>;
using u32 = py::array_t<uint32_t, py::array::c_style>;
using rc::UsageError;

namespace {

template <typename T>
std::vector<T> copy_of(const py::array_t<T, py::array::c_style>& a) {
  return std::vector<T>(a.data(), a.data() + a.size());
}

// One read of a value another thread may be writing: the compiler may not read it again later
// (a relaxed atomic load is a plain load on x86 and ARM).
template <typename T>
inline T load_once(const T* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

// CompressAI's layout: table t is cdfs[t, :cdf_lengths[t]]; its last symbol (cdf_lengths[t] - 2)
// is the escape, the symbols below it stand for values offsets[t] + 0, 1, ... Copied, then validated.
struct Tables {
  std::vector<uint32_t> cdfs;
  std::vector<int32_t> lengths, offsets;
  int64_t count, stride;

  // With the GIL held.
  Tables(const u32& c, const i32& l, const i32& o) {
    if (c.ndim() != 2 || l.ndim() != 1 || o.ndim() != 1 || l.shape(0) != c.shape(0) || o.shape(0) != c.shape(0))
      throw UsageError("cdfs must be (T, L), cdf_lengths and offsets (T,)");
    count = c.shape(0);
    stride = c.shape(1);
    cdfs = copy_of(c);
    lengths = copy_of(l);
    offsets = copy_of(o);
  }

  // Without the GIL: the copies are this call's own.
  void validate() const {
    for (int64_t t = 0; t < count; ++t) {
      const int32_t n = lengths[t];
      // Strictly increasing from 0 to TOTAL: at most TOTAL + 1 entries, so a symbol fits the LUT's uint16.
      if (n < 2 || n > stride || n > static_cast<int64_t>(rc::TOTAL) + 1)
        throw UsageError("cdf_lengths[" + std::to_string(t) + "] out of range");
      const uint32_t* cdf = table(static_cast<int32_t>(t));
      if (cdf[0] != 0 || cdf[n - 1] != rc::TOTAL)
        throw UsageError("cdf table " + std::to_string(t) + " must run from 0 to 65536");
      for (int32_t s = 0; s + 1 < n; ++s)
        if (cdf[s + 1] <= cdf[s])
          throw UsageError("cdf table " + std::to_string(t) + " is not strictly increasing");
    }
  }
  const uint32_t* table(int32_t t) const { return cdfs.data() + static_cast<int64_t>(t) * stride; }
  // The escape, table t's last symbol.
  uint32_t last(int32_t t) const { return static_cast<uint32_t>(lengths[t] - 2); }

  // Decoding lookup: for each table and each of the LUT_BUCKETS slices of [0, TOTAL), the symbol
  // whose interval holds the slice's first value. The symbol holding any v in the slice is then
  // at most a few steps further, found by a short scan instead of a binary search.
  static constexpr int LUT_SHIFT = 8;
  static constexpr uint32_t LUT_BUCKETS = rc::TOTAL >> LUT_SHIFT;
  std::vector<uint16_t> build_lut() const {
    std::vector<uint16_t> lut(static_cast<size_t>(count) * LUT_BUCKETS);
    for (int64_t t = 0; t < count; ++t) {
      const uint32_t* cdf = table(static_cast<int32_t>(t));
      const uint32_t last_symbol = last(static_cast<int32_t>(t));
      uint32_t s = 0;
      for (uint32_t b = 0; b < LUT_BUCKETS; ++b) {
        while (s < last_symbol && cdf[s + 1] <= (b << LUT_SHIFT)) ++s;  // bounded by the table's length
        lut[t * LUT_BUCKETS + b] = static_cast<uint16_t>(s);
      }
    }
    return lut;
  }
};

// Each symbol's row is fresh memory, so decoding rows waits on cache misses: fetch the entries the
// next row's binary search reads first (its ends and top three levels) while this symbol is decoded.
inline void prefetch_search(const uint32_t* row, uint32_t n) {
  for (uint32_t k = 0; k <= 8; ++k) __builtin_prefetch(row + static_cast<uint64_t>(n) * k / 8);
}

// Rows: (N, K + 1) with 1 <= K < 2^31 (a symbol is an int32).
int64_t row_width(const u32& rows) {
  if (rows.ndim() != 2 || rows.shape(1) < 2 || rows.shape(1) - 1 > INT32_MAX)
    throw UsageError("cdf_rows must be (N, K+1) with 1 <= K < 2^31");
  return rows.shape(1);
}

// Whether row[0 .. width) never decreases (one pass, vectorised).
inline bool nondecreasing(const uint32_t* row, int64_t width) {
  uint32_t down = 0;
  for (int64_t j = 0; j + 1 < width; ++j) down |= row[j + 1] < row[j];
  return down == 0;
}

class PyEncoder {
 public:
  // Each call codes its symbols whole (the mutex), and returns its place in the stream: 0 for the
  // first call. With several threads on one encoder, the calls decode in that order.
  int64_t encode_indexed(const i32& symbols, const i32& indexes, const u32& cdfs, const i32& lengths,
                         const i32& offsets) {
    if (indexes.size() != symbols.size()) throw UsageError("symbols and indexes differ in size");
    const Tables tab(cdfs, lengths, offsets);
    const int32_t* sym = symbols.data();  // read in place, once each
    const int32_t* idx = indexes.data();
    const int64_t n = symbols.size();
    py::gil_scoped_release release;
    tab.validate();
    std::lock_guard<std::mutex> lock(mu_);
    check_open();
    const rc::Encoder::State saved = enc_.state();
    try {
      for (int64_t i = 0; i < n; ++i) {
        const int32_t t = load_once(idx + i);
        if (t < 0 || t >= tab.count) throw UsageError("index " + std::to_string(i) + " names no table");
        const uint32_t* cdf = tab.table(t);
        const int64_t escape = tab.last(t);
        int64_t value = static_cast<int64_t>(load_once(sym + i)) - tab.offsets[t];
        uint64_t raw = 0;
        bool escaped = false;
        if (value < 0) {  // below the support: odd raw values
          raw = static_cast<uint64_t>(-2 * value - 1);
          value = escape;
          escaped = true;
        } else if (value >= escape) {  // at or above the escape: even raw values
          raw = static_cast<uint64_t>(2 * (value - escape));
          value = escape;
          escaped = true;
        }
        enc_.encode(cdf[value], cdf[value + 1] - cdf[value]);
        if (escaped) enc_.encode_escape(raw);
      }
    } catch (...) {
      enc_.restore(saved);
      throw;
    }
    return calls_++;
  }

  // Every row is checked whole (0 .. 65536, never decreasing: what the decoder's search needs to find
  // the symbol coded) and the symbol's frequency must be >= 1; zero-width symbols elsewhere are fine.
  int64_t encode_rows(const i32& symbols, const u32& rows) {
    const int64_t width = row_width(rows);
    if (rows.shape(0) != symbols.size()) throw UsageError("cdf_rows must have one row per symbol");
    const int32_t* sym = symbols.data();  // read in place, once each
    const int64_t n = symbols.size();
    const uint32_t* cdf = rows.data();  // read in place: every read bounded by its row, values checked once read
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    check_open();
    const rc::Encoder::State saved = enc_.state();
    try {
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t* row = cdf + i * width;
        const int32_t s = load_once(sym + i);
        if (s < 0 || s >= width - 1) throw UsageError("symbol " + std::to_string(i) + " outside [0, K)");
        if (row[0] != 0 || row[width - 1] != rc::TOTAL || !nondecreasing(row, width))
          throw UsageError("cdf row " + std::to_string(i) + " must run from 0 to 65536 and never decrease");
        const uint32_t lo = load_once(row + s), hi = load_once(row + s + 1);
        if (!(lo < hi && hi <= rc::TOTAL))
          throw UsageError("symbol " + std::to_string(i) + " has zero frequency in its cdf row");
        enc_.encode(lo, hi - lo);
      }
    } catch (...) {
      enc_.restore(saved);
      throw;
    }
    return calls_++;
  }

  py::bytes finish() {
    std::string s;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      check_open();
      finished_ = true;
      s = enc_.finish();
    }
    return py::bytes(s);
  }

 private:
  void check_open() const {
    if (finished_) throw UsageError("encoder already finished");
  }

  std::mutex mu_;
  rc::Encoder enc_;
  bool finished_ = false;
  int64_t calls_ = 0;
};

class PyDecoder {
 public:
  explicit PyDecoder(const py::bytes& data)
      : buf_(checked(data)), dec_(reinterpret_cast<const uint8_t*>(buf_.data()), buf_.size()) {}

  py::array_t<int32_t> decode_indexed(const i32& indexes, const u32& cdfs, const i32& lengths, const i32& offsets) {
    const Tables tab(cdfs, lengths, offsets);
    const int32_t* idx = indexes.data();  // read in place, once each
    const int64_t n = indexes.size();
    py::array_t<int32_t> out(n);  // not seen by Python before it is returned
    int32_t* sym = out.mutable_data();
    {
      py::gil_scoped_release release;
      tab.validate();
      const std::vector<uint16_t> lut = tab.build_lut();
      std::lock_guard<std::mutex> lock(mu_);
      check_open();
      const rc::Decoder::State saved = dec_.state();
      try {
        for (int64_t i = 0; i < n; ++i) {
          const int32_t t = load_once(idx + i);
          if (t < 0 || t >= tab.count) throw UsageError("index " + std::to_string(i) + " names no table");
          const uint32_t* cdf = tab.table(t);
          const uint32_t escape = tab.last(t);
          const uint32_t v = dec_.target();
          uint32_t s = lut[static_cast<size_t>(t) * Tables::LUT_BUCKETS + (v >> Tables::LUT_SHIFT)];
          while (s < escape && cdf[s + 1] <= v) ++s;  // bounded by the table's length, whatever its values
          const uint32_t lo = cdf[s], hi = cdf[s + 1];
          if (!(lo <= v && v < hi)) throw UsageError("cdf table " + std::to_string(t) + " is not increasing");
          dec_.consume(lo, hi - lo);
          int64_t value = s;
          if (s == escape) {
            const uint64_t raw = dec_.decode_escape();
            value = (raw & 1) ? -static_cast<int64_t>((raw + 1) >> 1) : escape + static_cast<int64_t>(raw >> 1);
          }
          value += tab.offsets[t];
          if (value < INT32_MIN || value > INT32_MAX) throw rc::DecodeError("corrupt data: symbol out of range");
          sym[i] = static_cast<int32_t>(value);
        }
      } catch (...) {
        dec_.restore(saved);
        throw;
      }
    }
    return out;
  }

  // Rows are not validated whole (that would cost K per symbol): each row's ends and the one interval
  // used are, which is what keeps the decoder's state valid.
  py::array_t<int32_t> decode_rows(const u32& rows) {
    const int64_t width = row_width(rows);
    const int64_t n = rows.shape(0);
    const uint32_t* cdf = rows.data();  // read in place: every read bounded by its row, values checked once read
    const uint32_t k = static_cast<uint32_t>(width - 1);
    py::array_t<int32_t> out(n);
    int32_t* sym = out.mutable_data();
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      check_open();
      const rc::Decoder::State saved = dec_.state();
      try {
        for (int64_t i = 0; i < n; ++i) {
          const uint32_t* row = cdf + i * width;
          if (i + 1 < n) prefetch_search(row + width, k);
          if (row[0] != 0 || row[width - 1] != rc::TOTAL)
            throw UsageError("cdf row " + std::to_string(i) + " must run from 0 to 65536");
          const uint32_t v = dec_.target();
          const uint32_t s = rc::search(row, k, v);  // s < k: reads row[0 .. k-1] only
          const uint32_t lo = load_once(row + s), hi = load_once(row + s + 1);
          if (!(lo <= v && v < hi && hi <= rc::TOTAL))
            throw UsageError("cdf row " + std::to_string(i) + " is not increasing");
          dec_.consume(lo, hi - lo);
          sym[i] = static_cast<int32_t>(s);
        }
      } catch (...) {
        dec_.restore(saved);
        throw;
      }
    }
    return out;
  }

  // The payload must end where its coded symbols do: raises DecodeError if bytes were left unread or
  // the last bytes read are not the encoder's. The decoder is closed afterwards, whatever the outcome.
  void end() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    check_open();
    ended_ = true;
    if (dec_.bytes_read() < dec_.size())
      throw rc::DecodeError("corrupt data: " + std::to_string(dec_.size() - dec_.bytes_read()) + " of the payload's " +
                            std::to_string(dec_.size()) + " bytes follow its coded symbols");
    if (!dec_.at_end()) throw rc::DecodeError("corrupt data: the payload does not end as its coded symbols do");
  }

  size_t bytes_read() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    return dec_.bytes_read();
  }

 private:
  // With the GIL held, before the decoder reads it: an empty payload, or one of more than one byte that
  // ends in a zero byte, is no encoder's output (finish() keeps one byte and strips trailing zeros).
  static std::string checked(const py::bytes& data) {
    std::string s = data;
    if (s.empty()) throw rc::DecodeError("corrupt data: empty payload");
    if (s.size() > 1 && s.back() == 0) throw rc::DecodeError("corrupt data: the payload ends in a zero byte");
    return s;
  }
  void check_open() const {
    if (ended_) throw UsageError("decoder already ended");
  }

  std::mutex mu_;
  const std::string buf_;  // owned copy: the decoder's pointers stay valid whatever Python does
  rc::Decoder dec_;
  bool ended_ = false;
};

}  // namespace

PYBIND11_MODULE(_rangecoder, m) {
  m.doc() = "Range coder over 16-bit integer CDFs (see cpp/rangecoder.hpp for the invariants).";
  m.attr("PRECISION") = rc::PRECISION;
  py::register_exception<rc::DecodeError>(m, "DecodeError", PyExc_ValueError);
  py::register_exception<rc::UsageError>(m, "CoderError", PyExc_ValueError);
  py::class_<PyEncoder>(m, "RangeEncoder")
      .def(py::init<>())
      .def("encode_indexed", &PyEncoder::encode_indexed, py::arg("symbols"), py::arg("indexes"), py::arg("cdfs"),
           py::arg("cdf_lengths"), py::arg("offsets"))
      .def("encode_rows", &PyEncoder::encode_rows, py::arg("symbols"), py::arg("cdf_rows"))
      .def("finish", &PyEncoder::finish);
  py::class_<PyDecoder>(m, "RangeDecoder")
      .def(py::init<const py::bytes&>(), py::arg("data"))
      .def("decode_indexed", &PyDecoder::decode_indexed, py::arg("indexes"), py::arg("cdfs"), py::arg("cdf_lengths"),
           py::arg("offsets"))
      .def("decode_rows", &PyDecoder::decode_rows, py::arg("cdf_rows"))
      .def("end", &PyDecoder::end)
      .def_property_readonly("bytes_read", &PyDecoder::bytes_read);
}
