// The fields of a NumPy ufunc that _loops.pxd reads (its loops, their type numbers, its
// arity), on every NumPy sparsekit builds against. NumPy 2.5's Cython declarations turned
// them into properties and dropped `types`; its C header keeps them in
// PyUFuncObject_fields, reached through _PyUFuncObject_GET_ITEM_DATA. Older NumPy has them
// in PyUFuncObject itself.
#ifndef SPARSEKIT_UFUNC_HH
#define SPARSEKIT_UFUNC_HH

#include <Python.h>
#include <numpy/ufuncobject.h>

#ifdef _PyUFuncObject_GET_ITEM_DATA
typedef PyUFuncObject_fields sk_ufunc_fields;
static inline sk_ufunc_fields* sk_ufunc(PyObject* ufunc) {
    return (sk_ufunc_fields*)_PyUFuncObject_GET_ITEM_DATA(ufunc);
}
#else
typedef PyUFuncObject sk_ufunc_fields;
static inline sk_ufunc_fields* sk_ufunc(PyObject* ufunc) {
    return (sk_ufunc_fields*)ufunc;
}
#endif

#endif  // SPARSEKIT_UFUNC_HH
