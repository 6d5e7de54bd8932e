// What the fast methods (common.hpp) share: their arguments.
#include "common.hpp"

namespace pyshm {

bool parse_args(const char* fn, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                std::initializer_list<const char*> names, std::size_t required, PyObject** out) {
    const auto n = static_cast<Py_ssize_t>(names.size());
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd argument%s (%zd given)", fn, n, n == 1 ? "" : "s", nargs);
        return false;
    }
    for (Py_ssize_t i = 0; i < n; ++i) out[i] = i < nargs ? args[i] : nullptr;
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; ++k) {
        PyObject* key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        for (const char* name : names) {
            if (PyUnicode_CompareWithASCIIString(key, name) == 0) break;
            ++i;
        }
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fn, key);
            return false;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", fn, key);
            return false;
        }
        out[i] = args[nargs + k];
    }
    for (std::size_t i = 0; i < required; ++i)
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, names.begin()[i]);
            return false;
        }
    return true;
}

bool to_bool(PyObject* o, const char* what, bool* out) {
    if (o == Py_True || o == Py_False || o == Py_None) {
        *out = o == Py_True;
        return true;
    }
    PyNumberMethods* nb = Py_TYPE(o)->tp_as_number;
    if (nb && nb->nb_bool) {
        const int r = nb->nb_bool(o);
        if (r == 0 || r == 1) {
            *out = r == 1;
            return true;
        }
        if (PyErr_Occurred()) return false;
    }
    PyErr_Format(PyExc_TypeError, "%s must be a bool, not %.200s", what, Py_TYPE(o)->tp_name);
    return false;
}

}  // namespace pyshm
