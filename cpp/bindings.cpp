// pybind11 face of the range coder: batched numpy in, bytes / numpy out, the GIL released while coding.
// Argument checking of shapes and dtypes lives in bitstream/coder.py; this file checks what it must
// to stay memory-safe (indexes, lengths, CDF validity) and reports bad data as DecodeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rangecoder.hpp"

namespace py = pybind11;
using i32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using u32 = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;

namespace {

// CompressAI's layout: table t is cdfs[t, :cdf_lengths[t]]; its last symbol (cdf_lengths[t] - 2)
// is the escape, the symbols below it stand for values offsets[t] + 0, 1, ...
struct Tables {
  const uint32_t* cdfs;
  const int32_t* lengths;
  const int32_t* offsets;
  int64_t count, stride;

  Tables(const u32& c, const i32& l, const i32& o)
      : cdfs(c.data()), lengths(l.data()), offsets(o.data()), count(c.ndim() == 2 ? c.shape(0) : 0),
        stride(c.ndim() == 2 ? c.shape(1) : 0) {
    if (c.ndim() != 2 || l.ndim() != 1 || o.ndim() != 1 || l.shape(0) != count || o.shape(0) != count)
      throw std::invalid_argument("cdfs must be (T, L), cdf_lengths and offsets (T,)");
    for (int64_t t = 0; t < count; ++t) {
      const int32_t n = lengths[t];
      if (n < 2 || n > stride) throw std::invalid_argument("cdf_lengths[" + std::to_string(t) + "] out of range");
      const uint32_t* cdf = cdfs + t * stride;
      if (cdf[0] != 0 || cdf[n - 1] != rc::TOTAL)
        throw std::invalid_argument("cdf table " + std::to_string(t) + " must run from 0 to 65536");
      for (int32_t s = 0; s + 1 < n; ++s)
        if (cdf[s + 1] <= cdf[s])
          throw std::invalid_argument("cdf table " + std::to_string(t) + " is not strictly increasing");
    }
  }
  const uint32_t* table(int32_t t) const { return cdfs + static_cast<int64_t>(t) * stride; }

  // Decoding lookup: for each table and each of the LUT_BUCKETS slices of [0, TOTAL), the symbol
  // whose interval holds the slice's first value. The symbol holding any v in the slice is then
  // at most a few steps further, found by a short scan instead of a binary search.
  static constexpr int LUT_SHIFT = 8;
  static constexpr uint32_t LUT_BUCKETS = rc::TOTAL >> LUT_SHIFT;
  std::vector<uint16_t> build_lut() const {
    std::vector<uint16_t> lut(static_cast<size_t>(count) * LUT_BUCKETS);
    for (int64_t t = 0; t < count; ++t) {
      const uint32_t* cdf = table(static_cast<int32_t>(t));
      uint32_t s = 0;
      for (uint32_t b = 0; b < LUT_BUCKETS; ++b) {
        while (cdf[s + 1] <= (b << LUT_SHIFT)) ++s;  // cdf[len-1] = TOTAL stops it
        lut[t * LUT_BUCKETS + b] = static_cast<uint16_t>(s);
      }
    }
    return lut;
  }
};

void check_indexes(const int32_t* idx, int64_t n, int64_t count) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= count) throw std::invalid_argument("index " + std::to_string(i) + " names no table");
}

// Each symbol's row is fresh memory, so decoding rows waits on cache misses: fetch the entries the
// next row's binary search reads first (its ends and top three levels) while this symbol is decoded.
inline void prefetch_search(const uint32_t* row, uint32_t n) {
  for (uint32_t k = 0; k <= 8; ++k) __builtin_prefetch(row + static_cast<uint64_t>(n) * k / 8);
}

class PyEncoder {
 public:
  void encode_indexed(const i32& symbols, const i32& indexes, const u32& cdfs, const i32& lengths,
                      const i32& offsets) {
    const Tables tab(cdfs, lengths, offsets);
    const int64_t n = symbols.size();
    if (indexes.size() != n) throw std::invalid_argument("symbols and indexes differ in size");
    const int32_t* sym = symbols.data();
    const int32_t* idx = indexes.data();
    check_indexes(idx, n, tab.count);
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t t = idx[i];
      const uint32_t* cdf = tab.table(t);
      const int64_t escape = tab.lengths[t] - 2;
      int64_t value = static_cast<int64_t>(sym[i]) - tab.offsets[t];
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
  }

  void encode_rows(const i32& symbols, const u32& rows) {
    if (rows.ndim() != 2 || rows.shape(0) != symbols.size() || rows.shape(1) < 2)
      throw std::invalid_argument("cdf_rows must be (N, K+1) with N = len(symbols), K >= 1");
    const int64_t n = symbols.size(), width = rows.shape(1);
    const int32_t* sym = symbols.data();
    const uint32_t* cdf = rows.data();
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t* row = cdf + i * width;
      if (sym[i] < 0 || sym[i] >= width - 1)
        throw std::invalid_argument("symbol " + std::to_string(i) + " outside [0, K)");
      if (row[0] != 0 || row[width - 1] != rc::TOTAL || row[sym[i] + 1] <= row[sym[i]])
        throw std::invalid_argument("cdf row " + std::to_string(i) + " is invalid");
    }
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t* row = cdf + i * width;
      enc_.encode(row[sym[i]], row[sym[i] + 1] - row[sym[i]]);
    }
  }

  py::bytes finish() {
    if (finished_) throw std::logic_error("encoder already finished");
    finished_ = true;
    const std::string s = enc_.finish();
    return py::bytes(s);
  }

 private:
  rc::Encoder enc_;
  bool finished_ = false;
};

class PyDecoder {
 public:
  explicit PyDecoder(const py::bytes& data)
      : buf_(data), dec_(reinterpret_cast<const uint8_t*>(buf_.data()), buf_.size()) {}

  py::array_t<int32_t> decode_indexed(const i32& indexes, const u32& cdfs, const i32& lengths, const i32& offsets) {
    const Tables tab(cdfs, lengths, offsets);
    const int64_t n = indexes.size();
    const int32_t* idx = indexes.data();
    check_indexes(idx, n, tab.count);
    py::array_t<int32_t> out(n);
    int32_t* sym = out.mutable_data();
    {
      py::gil_scoped_release release;
      const std::vector<uint16_t> lut = tab.build_lut();
      for (int64_t i = 0; i < n; ++i) {
        const int32_t t = idx[i];
        const uint32_t* cdf = tab.table(t);
        const int64_t escape = tab.lengths[t] - 2;
        const uint32_t v = dec_.target();
        // v < TOTAL = cdf[len-1], so the scan stops at a symbol of this table (at most the escape).
        uint32_t s = lut[static_cast<size_t>(t) * Tables::LUT_BUCKETS + (v >> Tables::LUT_SHIFT)];
        while (cdf[s + 1] <= v) ++s;
        dec_.consume(cdf[s], cdf[s + 1] - cdf[s]);
        int64_t value = s;
        if (s == escape) {
          const uint64_t raw = dec_.decode_escape();
          value = (raw & 1) ? -static_cast<int64_t>((raw + 1) >> 1) : escape + static_cast<int64_t>(raw >> 1);
        }
        value += tab.offsets[t];
        if (value < INT32_MIN || value > INT32_MAX) throw rc::DecodeError("corrupt data: symbol out of range");
        sym[i] = static_cast<int32_t>(value);
      }
    }
    return out;
  }

  py::array_t<int32_t> decode_rows(const u32& rows) {
    if (rows.ndim() != 2 || rows.shape(1) < 2) throw std::invalid_argument("cdf_rows must be (N, K+1), K >= 1");
    const int64_t n = rows.shape(0), width = rows.shape(1);
    const uint32_t* cdf = rows.data();
    py::array_t<int32_t> out(n);
    int32_t* sym = out.mutable_data();
    {
      py::gil_scoped_release release;
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t* row = cdf + i * width;
        if (i + 1 < n) prefetch_search(row + width, static_cast<uint32_t>(width - 1));
        if (row[0] != 0 || row[width - 1] != rc::TOTAL) throw std::invalid_argument("cdf row is invalid");
        const uint32_t v = dec_.target();
        const uint32_t s = rc::search(row, static_cast<uint32_t>(width - 1), v);
        // Rows are not validated whole (that would cost K per symbol): check the one interval used.
        if (row[s + 1] <= v || row[s] > v) throw std::invalid_argument("cdf row is not increasing");
        dec_.consume(row[s], row[s + 1] - row[s]);
        sym[i] = static_cast<int32_t>(s);
      }
    }
    return out;
  }

 private:
  std::string buf_;  // owned copy: the decoder's pointers stay valid whatever Python does
  rc::Decoder dec_;
};

}  // namespace

PYBIND11_MODULE(_rangecoder, m) {
  m.doc() = "Range coder over 16-bit integer CDFs (see cpp/rangecoder.hpp for the invariants).";
  m.attr("PRECISION") = rc::PRECISION;
  py::register_exception<rc::DecodeError>(m, "DecodeError", PyExc_ValueError);
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
      .def("decode_rows", &PyDecoder::decode_rows, py::arg("cdf_rows"));
}
