// Binding of native entry points, shared by gankern._C, gankern._cuda and gankern._cuda_emu.
//
// A family writes csrc/<family>/bind.cpp once:
//
//   GK_BIND_FAMILY(bias_act) {
//     gk::bind::def(m, "forward", &gk::bias_act::forward, "y = ...");
//   }
//
// CMake compiles every csrc/*/bind.cpp into each module (GK_BACKEND_CPU or GK_BACKEND_CUDA defined),
// so the same lines bind the CPU and the CUDA definition of each entry point; the family becomes
// the submodule gankern._C.<family> (and _cuda.<family>). Adding a family edits no shared file.
//
// From Python an entry point is `fn(stream, *fields)`: the fields of its Params (GK_STRUCT) in
// declaration order (their names are the submodule's FIELDS[pass]; gankern/_native.py wraps each
// entry point in a keyword-only function made from them, as pybind11's own keyword matching costs
// microseconds per call); pybind11 rejects a wrong type. A gk::View argument takes a torch.Tensor (read through
// its data_ptr(), numel() and dtype: C++ still never includes torch), None, or an
// (address, dtype code, numel) tuple. The GIL is released while the entry point runs.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::array fields (diffusion coefficients)

#include <string>
#include <utility>
#include <vector>

#include "common/view.h"

namespace gk::bind {
// torch dtype objects -> gk::DType codes, registered once per module by gankern/_native.py.
inline std::vector<std::pair<PyObject*, int>>& dtype_codes() {
  static std::vector<std::pair<PyObject*, int>> codes;
  return codes;
}
}  // namespace gk::bind

namespace pybind11::detail {
template <>
struct type_caster<gk::View> {
  PYBIND11_TYPE_CASTER(gk::View, const_name("Tensor | None"));

  bool load(handle src, bool) {
    PyObject* o = src.ptr();
    if (o == Py_None) {
      value = gk::View{};
      return true;
    }
    if (PyTuple_Check(o)) return load_tuple(o);
    static PyObject* s_data_ptr = PyUnicode_InternFromString("data_ptr");
    static PyObject* s_numel = PyUnicode_InternFromString("numel");
    static PyObject* s_dtype = PyUnicode_InternFromString("dtype");
    object dtype = reinterpret_steal<object>(PyObject_GetAttr(o, s_dtype));
    if (!dtype) {
      PyErr_Clear();
      return false;
    }
    value.dtype = -2;
    for (auto& [obj, code] : gk::bind::dtype_codes())
      if (obj == dtype.ptr()) value.dtype = code;
    if (value.dtype == -2) {  // a dtype no kernel takes: say which
      throw type_error("gankern: no native kernel takes tensors of " + std::string(str(dtype)));
    }
    object data = reinterpret_steal<object>(PyObject_CallMethodNoArgs(o, s_data_ptr));
    object numel = reinterpret_steal<object>(PyObject_CallMethodNoArgs(o, s_numel));
    if (!data || !numel) {
      PyErr_Clear();
      return false;
    }
    value.data = PyLong_AsUnsignedLongLong(data.ptr());
    value.numel = PyLong_AsLongLong(numel.ptr());
    return !PyErr_Occurred();
  }

  bool load_tuple(PyObject* t) {
    if (PyTuple_GET_SIZE(t) != 3) return false;
    value.data = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, 0));
    value.dtype = static_cast<int>(PyLong_AsLong(PyTuple_GET_ITEM(t, 1)));
    value.numel = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 2));
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    return true;
  }

  static handle cast(const gk::View& v, return_value_policy, handle) {
    return make_tuple(v.data, v.dtype, v.numel).release();
  }
};
}  // namespace pybind11::detail

namespace gk::bind {
namespace py = pybind11;

template <typename M> struct member_type;
template <typename C, typename T> struct member_type<T C::*> { using type = T; };

template <typename Params, std::size_t I>
using field_type = typename member_type<
    std::remove_cv_t<std::tuple_element_t<I + 1, std::remove_cv_t<decltype(Params::members())>>>>::type;

template <typename Params>
std::string fields_doc() {
  std::string doc = "\n\nFields:";
  constexpr std::size_t n = std::tuple_size_v<decltype(Params::members())> - 1;
  for (std::size_t i = 1; i <= n; ++i)
    doc += std::string("\n    ") + Params::field_names[i] + ": " + Params::field_docs[i];
  return doc;
}

template <typename R, typename Params, std::size_t... I>
void def_fields(py::module_& m, const char* name, R (*fn)(const Params&, Stream), const char* doc,
                std::index_sequence<I...>) {
  m.def(
      name,
      [fn](Stream stream, field_type<Params, I>... values) -> R {
        Params p{};
        constexpr auto members = Params::members();
        ((p.*std::get<I + 1>(members) = values), ...);
        py::gil_scoped_release nogil;
        return fn(p, stream);
      },
      py::arg("stream"), py::arg(Params::field_names[I + 1])..., (std::string(doc) + fields_doc<Params>()).c_str());
  // The field names in order, for gankern/_native.py's keyword-only callers.
  if (!py::hasattr(m, "FIELDS")) m.attr("FIELDS") = py::dict();
  m.attr("FIELDS")[name] = py::make_tuple(Params::field_names[I + 1]...);
}

// Binds `R fn(const Params&, Stream)` as `name(stream, <every field of Params>) -> R`.
template <typename R, typename Params>
void def(py::module_& m, const char* name, R (*fn)(const Params&, Stream), const char* doc) {
  constexpr std::size_t n = std::tuple_size_v<decltype(Params::members())> - 1;
  def_fields(m, name, fn, doc, std::make_index_sequence<n>{});
}

// Self-registration: each family's bind.cpp adds itself; the module binds them all at import.
using Binder = void (*)(py::module_&);
inline std::vector<std::pair<const char*, Binder>>& families() {
  static std::vector<std::pair<const char*, Binder>> all;
  return all;
}
struct Register {
  Register(const char* family, Binder binder) { families().emplace_back(family, binder); }
};

// Everything a module shares: the families, the tables' digest and the dtype registration.
inline void bind_families(py::module_& m) {
  for (auto& [family, binder] : families()) {
    py::module_ sub = m.def_submodule(family);
    binder(sub);
  }
  m.attr("TABLES_DIGEST") = kTablesDigest;
  m.def(
      "set_dtype_codes",
      [](const py::dict& codes) {
        dtype_codes().clear();
        for (auto item : codes) {
          item.first.inc_ref();  // torch dtypes are immortal singletons; keep them so
          dtype_codes().emplace_back(item.first.ptr(), item.second.cast<int>());
        }
      },
      "torch dtype -> gk::DType code, for tensors passed as views (gankern/_native.py)");
}

}  // namespace gk::bind

#define GK_BIND_FAMILY(family)                                                      \
  static void gk_bind_##family(pybind11::module_& m);                               \
  static const gk::bind::Register gk_register_##family(#family, &gk_bind_##family); \
  static void gk_bind_##family(pybind11::module_& m)
