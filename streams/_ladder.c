/* The per-level loops of depth frames in C: the order book's (streams.book._Ladder.apply_levels)
   and the plausibility guard's (monitor.guards._plausible_py); and the depth band's sum
   (streams.book._notional_py), read by every snapshot.

   Optional, like websockets' speedups: streams/book.py and monitor/guards.py hold the same loops
   in Python (the band's in numpy) and use them when this module was not built; the tests run both (against a naive
   book for the first). A depth frame carries about 40 levels, and in CPython each costs a dict
   look-up, an array store and comparisons dispatched through the interpreter (~0.2 us for the
   book, ~0.05 us for the check); here it is the same work with no interpreter in between.

   apply(levels, slot_of, prices, qtys, free, sign, dead, top, used) -> (top, used, lost_top)

   levels   sequence of (price, qty) pairs: qty > 0 sets the level, qty <= 0 removes it
   slot_of  dict price -> slot (int); updated
   prices   array('d'), one price per slot; updated
   qtys     array('d'), one quantity per slot; updated
   free     list of vacated slots (ints), reused last first; updated
   sign     -1.0 for bids, 1.0 for asks (the best price has the smallest sign * price)
   dead     the price a vacated slot holds (one that can never be the best)
   top      the best price before the call
   used     slots [0, used) are levels or free; the caller guarantees room for
            len(levels) more past it

   Returns the best price among the levels kept and set (the caller searches the whole book
   when ``lost_top``: the best level was removed), the new ``used``, and ``lost_top``.

   notional(prices, qtys, used, edge, sign) -> float

   The resting notional (price * qty, summed in slot order) of slots [0, used) whose price is
   at or better than ``edge``: sign * price <= sign * edge. Dead slots hold quantity 0.

   plausible(levels, low, high, cap) -> bool

   Whether every (price, qty) pair has low <= price <= high and price * qty <= cap (false for
   NaN, as in Python). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    Py_buffer view;
    double *data;
    Py_ssize_t len;
} doubles;

static int
get_doubles(PyObject *obj, doubles *out)
{
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (out->view.itemsize != sizeof(double) || out->view.format == NULL ||
        strcmp(out->view.format, "d") != 0) {
        PyBuffer_Release(&out->view);
        PyErr_SetString(PyExc_TypeError, "prices and qtys must be array('d')");
        return -1;
    }
    out->data = (double *)out->view.buf;
    out->len = out->view.len / (Py_ssize_t)sizeof(double);
    return 0;
}

/* One (price, qty) pair of a level sequence; -1 with an exception set if it is not one. */
static int
read_level(PyObject *level, double *price, double *qty)
{
    if (!PyTuple_Check(level) || PyTuple_GET_SIZE(level) != 2) {
        PyErr_SetString(PyExc_TypeError, "each level must be a (price, qty) tuple");
        return -1;
    }
    *price = PyFloat_AsDouble(PyTuple_GET_ITEM(level, 0));
    *qty = PyFloat_AsDouble(PyTuple_GET_ITEM(level, 1));
    if ((*price == -1.0 || *qty == -1.0) && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

static PyObject *
apply(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "apply() takes 9 arguments");
        return NULL;
    }
    PyObject *levels_obj = args[0], *slot_of = args[1], *free_list = args[4];
    if (!PyDict_CheckExact(slot_of) || !PyList_CheckExact(free_list)) {
        PyErr_SetString(PyExc_TypeError, "slot_of must be a dict and free a list");
        return NULL;
    }
    double sign = PyFloat_AsDouble(args[5]);
    double dead = PyFloat_AsDouble(args[6]);
    double top = PyFloat_AsDouble(args[7]);
    Py_ssize_t used = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *levels = PySequence_Fast(levels_obj, "levels must be a sequence");
    if (levels == NULL) {
        return NULL;
    }
    doubles prices, qtys;
    if (get_doubles(args[2], &prices) < 0) {
        Py_DECREF(levels);
        return NULL;
    }
    if (get_doubles(args[3], &qtys) < 0) {
        PyBuffer_Release(&prices.view);
        Py_DECREF(levels);
        return NULL;
    }

    double top_key = sign * top; /* the smallest key (sign * price) is the best */
    int lost_top = 0;
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(levels);
    PyObject **items = PySequence_Fast_ITEMS(levels);
    for (Py_ssize_t i = 0; i < n; i++) {
        double price, qty;
        if (read_level(items[i], &price, &qty) < 0) {
            goto done;
        }
        PyObject *price_obj = PyTuple_GET_ITEM(items[i], 0);
        PyObject *slot_obj = PyDict_GetItemWithError(slot_of, price_obj); /* borrowed */
        if (slot_obj == NULL && PyErr_Occurred()) {
            goto done;
        }
        if (qty > 0.0) {
            if (slot_obj != NULL) { /* an existing level: a new quantity */
                qtys.data[PyLong_AsSsize_t(slot_obj)] = qty;
                continue;
            }
            Py_ssize_t slot;
            Py_ssize_t n_free = PyList_GET_SIZE(free_list);
            if (n_free > 0) {
                PyObject *last = PyList_GET_ITEM(free_list, n_free - 1);
                slot = PyLong_AsSsize_t(last);
                if (PyList_SetSlice(free_list, n_free - 1, n_free, NULL) < 0) {
                    goto done;
                }
            }
            else {
                slot = used++;
            }
            if (slot < 0 || slot >= prices.len || slot >= qtys.len) {
                PyErr_SetString(PyExc_IndexError, "no room for a new level");
                goto done;
            }
            PyObject *value = PyLong_FromSsize_t(slot);
            int failed = value == NULL || PyDict_SetItem(slot_of, price_obj, value) < 0;
            Py_XDECREF(value);
            if (failed) {
                goto done;
            }
            prices.data[slot] = price;
            qtys.data[slot] = qty;
            if (sign * price < top_key) {
                top = price;
                top_key = sign * price;
            }
        }
        else if (slot_obj != NULL) { /* removing a level we never saw is normal: skipped */
            Py_ssize_t slot = PyLong_AsSsize_t(slot_obj);
            if (PyList_Append(free_list, slot_obj) < 0) {
                goto done;
            }
            if (PyDict_DelItem(slot_of, price_obj) < 0) { /* slot_obj is dead from here */
                goto done;
            }
            prices.data[slot] = dead;
            qtys.data[slot] = 0.0;
            if (price == top) {
                lost_top = 1;
            }
        }
    }
    result = Py_BuildValue("(dnO)", top, used, lost_top ? Py_True : Py_False);

done:
    PyBuffer_Release(&qtys.view);
    PyBuffer_Release(&prices.view);
    Py_DECREF(levels);
    return result;
}

static PyObject *
notional(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "notional() takes 5 arguments");
        return NULL;
    }
    Py_ssize_t used = PyLong_AsSsize_t(args[2]);
    double edge = PyFloat_AsDouble(args[3]);
    double sign = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    doubles prices, qtys;
    if (get_doubles(args[0], &prices) < 0) {
        return NULL;
    }
    if (get_doubles(args[1], &qtys) < 0) {
        PyBuffer_Release(&prices.view);
        return NULL;
    }
    if (used < 0 || used > prices.len || used > qtys.len) {
        PyBuffer_Release(&qtys.view);
        PyBuffer_Release(&prices.view);
        PyErr_SetString(PyExc_IndexError, "used is past the arrays");
        return NULL;
    }
    double key = sign * edge, total = 0.0;
    for (Py_ssize_t i = 0; i < used; i++) {
        double price = prices.data[i];
        if (sign * price <= key) {
            total += price * qtys.data[i];
        }
    }
    PyBuffer_Release(&qtys.view);
    PyBuffer_Release(&prices.view);
    return PyFloat_FromDouble(total);
}

static PyObject *
plausible(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "plausible() takes 4 arguments");
        return NULL;
    }
    double low = PyFloat_AsDouble(args[1]);
    double high = PyFloat_AsDouble(args[2]);
    double cap = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *levels = PySequence_Fast(args[0], "levels must be a sequence");
    if (levels == NULL) {
        return NULL;
    }
    PyObject *result = Py_True;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(levels);
    PyObject **items = PySequence_Fast_ITEMS(levels);
    for (Py_ssize_t i = 0; i < n; i++) {
        double price, qty;
        if (read_level(items[i], &price, &qty) < 0) {
            Py_DECREF(levels);
            return NULL;
        }
        if (!(low <= price && price <= high && price * qty <= cap)) {
            result = Py_False;
            break;
        }
    }
    Py_DECREF(levels);
    return Py_NewRef(result);
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))apply, METH_FASTCALL,
     "apply(levels, slot_of, prices, qtys, free, sign, dead, top, used) -> (top, used, lost_top)"},
    {"notional", (PyCFunction)(void (*)(void))notional, METH_FASTCALL,
     "notional(prices, qtys, used, edge, sign) -> float"},
    {"plausible", (PyCFunction)(void (*)(void))plausible, METH_FASTCALL,
     "plausible(levels, low, high, cap) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "streams._ladder", "The per-level loops of depth frames in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__ladder(void)
{
    return PyModule_Create(&module);
}
