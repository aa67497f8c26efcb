// The calling convention of every native entry point (docs/architecture.md, "Native code"):
//
//   void <pass>(const <Family>Params& p, gk::Stream stream);   // stream 0 on the CPU
//
// A family declares its Params once, with GK_STRUCT, as named tensor views (gk::View) and scalars;
// Python fills them by name (gankern/_native.py: launch) and csrc/common/bind.h binds every entry
// point the same way for the CPU and CUDA modules. No torch and no pybind11 here: the .cu files
// include this header.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

#include "common/macros.h"
#include "gk_tables.h"  // generated from gankern/_tables.py (csrc/gen_tables.py)

namespace gk {

using Stream = std::uintptr_t;  // a cudaStream_t on CUDA; 0 on the CPU

// The gk::DType code of a C++ storage type. The CUDA half types are added in
// common/cuda_utils.cuh; a CPU half type adds its own specialization next to its definition.
template <typename T> struct dtype_code;
template <> struct dtype_code<float> : std::integral_constant<int, kFloat32> {};
template <> struct dtype_code<double> : std::integral_constant<int, kFloat64> {};
template <> struct dtype_code<std::int64_t> : std::integral_constant<int, kInt64> {};
template <> struct dtype_code<std::uint8_t> : std::integral_constant<int, kUint8> {};

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBfloat16: return "bfloat16";
    case kFloat64: return "float64";
    case kInt64: return "int64";
    case kUint8: return "uint8";
    default: return "none";
  }
}

// A tensor as a kernel sees it: address, storage type and element count. Python builds one from a
// torch tensor (gankern/_native.py: view); None gives the view with dtype -1 (is_none). The layout (dense,
// strides) is the family's contract, written in its header.
struct View {
  std::uintptr_t data = 0;
  int dtype = -1;
  std::int64_t numel = 0;

  // None from Python (a tensor with no elements may also have address 0, but it has a dtype).
  bool is_none() const { return dtype < 0; }
  // Typed address, checked: a view of another dtype is an error naming the field, never a
  // reinterpretation. None gives nullptr.
  template <typename T>
  T* as(const char* field) const {
    constexpr int want = dtype_code<std::remove_const_t<T>>::value;
    if (!is_none() && dtype != want)
      throw std::invalid_argument(std::string(field) + " must be " + dtype_name(want) + ", got " +
                                  dtype_name(dtype));
    return reinterpret_cast<T*>(data);
  }
  // Address for code that dispatches on dtype itself (dispatch_types below).
  const void* ptr() const { return reinterpret_cast<const void*>(data); }
  void* mut_ptr() const { return reinterpret_cast<void*>(data); }
};

// Calls f(T{}) for the T among Ts whose dtype_code is `code`, so a pass is written once as a
// template on its storage type: dispatch_types<float>(...) on the CPU today,
// dispatch_types<float, __half, __nv_bfloat16>(...) on CUDA (cuda_utils.cuh: dispatch_dtype).
template <typename... Ts, typename F>
inline void dispatch_types(int code, const char* what, F&& f) {
  const bool found = ((code == dtype_code<Ts>::value ? (f(Ts{}), true) : false) || ...);
  if (!found) throw std::invalid_argument(std::string(what) + ": unsupported dtype " + dtype_name(code));
}

// Every view that is not None has the dtype and element count of `ref` (messages are built only
// on failure: these checks run on every call).
inline void check_same(const char* what, const View& ref, std::initializer_list<const View*> others) {
  for (const View* v : others) {
    if (v->is_none()) continue;
    if (v->dtype != ref.dtype)
      throw std::invalid_argument(std::string(what) + ": operands must share one dtype, got " +
                                  dtype_name(ref.dtype) + " and " + dtype_name(v->dtype));
    if (v->numel != ref.numel)
      throw std::invalid_argument(std::string(what) + ": operands must have " + std::to_string(ref.numel) +
                                  " elements, got " + std::to_string(v->numel));
  }
}

}  // namespace gk

// GK_STRUCT(Name, FIELDS) declares `struct Name` from an X-macro list of (type, name, doc) entries:
//
//   #define GK_BIAS_ACT_PARAMS(X) X(gk::View, x, "input") X(float, gain, "output scale") ...
//   GK_STRUCT(Params, GK_BIAS_ACT_PARAMS);
//
// The struct is plain data (it can be a kernel argument) that knows its fields: members() (a
// tuple of member pointers after a leading nullptr), field_names and field_docs (after a leading
// ""), which is all the binding needs (common/bind.h): the field list is written once.
#define GK_STRUCT_FIELD_(type, name, doc) type name{};
#define GK_STRUCT_MEMBER_(type, name, doc) , &Self_::name
#define GK_STRUCT_NAME_(type, name, doc) , #name
#define GK_STRUCT_DOC_(type, name, doc) , doc
#define GK_STRUCT(Name, FIELDS)                                                              \
  struct Name {                                                                              \
    FIELDS(GK_STRUCT_FIELD_)                                                                 \
    static constexpr auto members() {                                                        \
      using Self_ = Name;                                                                    \
      return std::make_tuple(nullptr FIELDS(GK_STRUCT_MEMBER_));                             \
    }                                                                                        \
    static constexpr const char* field_names[] = {"" FIELDS(GK_STRUCT_NAME_)};               \
    static constexpr const char* field_docs[] = {"" FIELDS(GK_STRUCT_DOC_)};                 \
  }
