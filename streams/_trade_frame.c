/* Binance trade and aggTrade frames read in C: streams.binance.parse_trade_frame's common case.

   Optional, like streams/_ladder.c: without this module streams/binance.py parses every trade
   frame in Python (msgspec, then the strict parser), and the tests compare the two on real and
   generated frames. A trade frame is the most frequent frame a signal reads; in CPython its
   parse was a Python call around msgspec's decode into two structs and the build of a Trade
   (~0.8 us); here it is one scan of the frame's characters and the Trade built directly.

   setup(trade_type, buy, sell, fallback)
       Once, at import: the Trade type, the BUY and SELL side strings and the Python parser that
       takes every frame this scan does not.

   parse(venue, raw, ts_recv) -> list[Trade]
       The same result as ``fallback(venue, raw, ts_recv)`` for every input. Only the exact
       compact shape Binance sends is scanned here:

           {"stream":"<name>","data":{"<key>":<value>,...}}

       with keys and strings free of escapes and non-ASCII, values that are strings, integers
       (at most 18 digits, no fraction or exponent) or true/false, "e" of "trade" (id "t") or
       "aggTrade" (id "a"), a non-empty "s", and "p" and "q" decimal strings of digits and one
       point with a finite, positive value; a key given twice counts with its last value, as in
       the Python readers. Anything else (another key order at the top, whitespace, a null, a
       float, an escape) goes to ``fallback``, which decides what it is, so this scan never has
       to be right about an odd frame. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <string.h>

static PyObject *trade_type, *buy, *sell, *fallback;

/* Symbols seen, so a trade reuses its symbol's str (and its cached hash) instead of making one:
   room for every symbol of a daemon's assets on the Binance venues; beyond that, or on a hostile
   stream of new names, a trade's symbol is made anew, as it was without the cache. */
#define SYMBOL_SLOTS 32
#define SYMBOL_MAX 32
static struct {
    char text[SYMBOL_MAX];
    Py_ssize_t len;
    PyObject *str;
} symbols[SYMBOL_SLOTS];
static int next_slot;

static PyObject *
symbol_str(const char *text, Py_ssize_t len)
{
    if (len > SYMBOL_MAX) {
        return PyUnicode_FromStringAndSize(text, len);
    }
    for (int i = 0; i < SYMBOL_SLOTS; i++) {
        if (symbols[i].str != NULL && symbols[i].len == len && memcmp(symbols[i].text, text, len) == 0) {
            return Py_NewRef(symbols[i].str);
        }
    }
    PyObject *str = PyUnicode_FromStringAndSize(text, len);
    if (str == NULL) {
        return NULL;
    }
    int i = next_slot;
    next_slot = (next_slot + 1) % SYMBOL_SLOTS;
    Py_XSETREF(symbols[i].str, Py_NewRef(str));
    memcpy(symbols[i].text, text, len);
    symbols[i].len = len;
    return str;
}

typedef struct {
    const char *p, *end;
} cursor;

static int
literal(cursor *c, const char *text, Py_ssize_t n)
{
    if (c->end - c->p < n || memcmp(c->p, text, n) != 0) {
        return 0;
    }
    c->p += n;
    return 1;
}

/* A string's characters after its opening quote, up to its closing quote (consumed): printable
   ASCII with no escape. 0 if it is not one. */
static int
string(cursor *c, const char **start, Py_ssize_t *len)
{
    const char *s = c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            *start = s;
            *len = c->p - s;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20 || ch > 0x7e) {
            return 0;
        }
        c->p++;
    }
    return 0;
}

/* A JSON integer of at most 18 digits, with no leading zero (a fraction or an exponent after it
   is what follows a value: not a comma or a brace, so the caller turns the frame down). */
static int
integer(cursor *c, long long *out)
{
    int negative = c->p < c->end && *c->p == '-';
    const char *s = c->p + negative, *q = s;
    long long v = 0;
    while (q < c->end && *q >= '0' && *q <= '9') {
        if (q - s == 18) {
            return 0;
        }
        v = v * 10 + (*q - '0');
        q++;
    }
    Py_ssize_t digits = q - s;
    if (digits == 0 || (digits > 1 && *s == '0')) {
        return 0;
    }
    c->p = q;
    *out = negative ? -v : v;
    return 1;
}

/* Powers of ten a double holds exactly. */
static const double exact_tens[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* A price or size string's value: digits with at most one point, converted as float() does;
   0 unless finite and positive.

   Nearly every one has at most 15 significant digits: its digits as an integer and the power of
   ten it is divided by are then both exact doubles, and one IEEE division rounds the quotient
   correctly, to the double float() returns (Clinger's fast path). Longer ones go through
   CPython's own conversion, whose x87 control-word switch costs more than the rest of a frame. */
static int
decimal(const char *s, Py_ssize_t len, double *out)
{
    char buf[64];
    int points = 0, digits = 0, after_point = 0;
    unsigned long long mantissa = 0;
    if (len == 0 || len >= (Py_ssize_t)sizeof(buf)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '.') {
            points++;
        }
        else if (ch >= '0' && ch <= '9') {
            if (mantissa != 0 || ch != '0') {
                digits++; /* significant: leading zeros are not */
            }
            if (digits <= 15) {
                mantissa = mantissa * 10 + (unsigned long long)(ch - '0');
                after_point += points;
            }
        }
        else {
            return 0;
        }
    }
    if (points > 1 || (len == 1 && points == 1)) {
        return 0; /* two points, or "." alone */
    }
    double v;
    if (digits <= 15 && after_point <= 22) {
        v = (double)mantissa / exact_tens[after_point];
    }
    else {
        memcpy(buf, s, len);
        buf[len] = '\0';
        char *stop;
        v = PyOS_string_to_double(buf, &stop, NULL);
        if ((v == -1.0 && PyErr_Occurred()) || stop != buf + len) {
            PyErr_Clear();
            return 0;
        }
    }
    if (!(v > 0.0 && v <= DBL_MAX)) {
        return 0;
    }
    *out = v;
    return 1;
}

enum { E, S, P, Q, T, M, ID_T, ID_A, FIELDS };

/* The fields of a frame this scan takes; 0 for any other frame. */
static int
scan(const char *text, Py_ssize_t size, const char **sym, Py_ssize_t *sym_len, double *price,
     double *qty, long long *ts, int *maker, long long *trade_id)
{
    cursor c = {text, text + size};
    const char *s;
    Py_ssize_t n;
    if (!literal(&c, "{\"stream\":\"", 11) || !string(&c, &s, &n) || !literal(&c, ",\"data\":{", 9)) {
        return 0;
    }
    int seen[FIELDS] = {0};
    const char *e = NULL, *p = NULL, *q = NULL;
    Py_ssize_t e_len = 0, p_len = 0, q_len = 0;
    long long ids[2] = {0, 0};
    for (;;) {
        const char *key;
        Py_ssize_t key_len;
        if (!literal(&c, "\"", 1) || !string(&c, &key, &key_len) || !literal(&c, ":", 1)) {
            return 0;
        }
        int field = -1;
        if (key_len == 1) {
            switch (key[0]) {
            case 'e': field = E; break;
            case 's': field = S; break;
            case 'p': field = P; break;
            case 'q': field = Q; break;
            case 'T': field = T; break;
            case 'm': field = M; break;
            case 't': field = ID_T; break;
            case 'a': field = ID_A; break;
            }
        }
        if (field >= 0) {
            seen[field] = 1; /* a key given twice: its last value, as every JSON reader here */
        }
        if (c.p >= c.end) {
            return 0;
        }
        char first = *c.p;
        if (first == '"') {
            c.p++;
            if (!string(&c, &s, &n)) {
                return 0;
            }
            switch (field) {
            case E: e = s; e_len = n; break;
            case S: *sym = s; *sym_len = n; break;
            case P: p = s; p_len = n; break;
            case Q: q = s; q_len = n; break;
            case -1: break;
            default: return 0; /* a string where a number or a boolean belongs */
            }
        }
        else if (first == 't' || first == 'f') {
            int value = first == 't';
            if (!literal(&c, value ? "true" : "false", value ? 4 : 5)) {
                return 0;
            }
            if (field == M) {
                *maker = value;
            }
            else if (field != -1) {
                return 0;
            }
        }
        else {
            long long v;
            if (!integer(&c, &v)) {
                return 0;
            }
            switch (field) {
            case T: *ts = v; break;
            case ID_T: ids[0] = v; break;
            case ID_A: ids[1] = v; break;
            case -1: break;
            default: return 0;
            }
        }
        if (literal(&c, ",", 1)) {
            continue;
        }
        if (literal(&c, "}}", 2) && c.p == c.end) {
            break;
        }
        return 0;
    }
    if (!(seen[E] && seen[S] && seen[P] && seen[Q] && seen[T] && seen[M]) || *sym_len == 0) {
        return 0;
    }
    if (e_len == 5 && memcmp(e, "trade", 5) == 0 && seen[ID_T]) {
        *trade_id = ids[0];
    }
    else if (e_len == 8 && memcmp(e, "aggTrade", 8) == 0 && seen[ID_A]) {
        *trade_id = ids[1];
    }
    else {
        return 0;
    }
    return decimal(p, p_len, price) && decimal(q, q_len, qty);
}

static PyObject *
parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "parse() takes 3 arguments");
        return NULL;
    }
    if (trade_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() was not called");
        return NULL;
    }
    PyObject *raw = args[1];
    const char *text = NULL;
    Py_ssize_t size = 0;
    if (PyUnicode_CheckExact(raw) && PyUnicode_IS_ASCII(raw)) {
        text = (const char *)PyUnicode_1BYTE_DATA(raw);
        size = PyUnicode_GET_LENGTH(raw);
    }
    else if (PyBytes_CheckExact(raw)) {
        text = PyBytes_AS_STRING(raw);
        size = PyBytes_GET_SIZE(raw);
    }
    const char *sym = NULL;
    Py_ssize_t sym_len = 0;
    double price = 0.0, qty = 0.0;
    long long ts = 0, trade_id = 0;
    int maker = 0;
    if (text == NULL || !scan(text, size, &sym, &sym_len, &price, &qty, &ts, &maker, &trade_id)) {
        return PyObject_Vectorcall(fallback, args, nargs, NULL);
    }
    PyObject *fields[8] = {NULL};
    fields[0] = args[0]; /* venue */
    fields[3] = args[2]; /* ts_recv */
    fields[6] = maker ? sell : buy; /* the buyer was the maker: the taker sold */
    PyObject *result = NULL;
    if ((fields[1] = symbol_str(sym, sym_len)) != NULL && (fields[2] = PyLong_FromLongLong(ts)) != NULL &&
        (fields[4] = PyFloat_FromDouble(price)) != NULL && (fields[5] = PyFloat_FromDouble(qty)) != NULL &&
        (fields[7] = PyLong_FromLongLong(trade_id)) != NULL) {
        PyObject *trade = PyObject_Vectorcall(trade_type, fields, 8, NULL);
        if (trade != NULL) {
            result = PyList_New(1);
            if (result == NULL) {
                Py_DECREF(trade);
            }
            else {
                PyList_SET_ITEM(result, 0, trade);
            }
        }
    }
    Py_XDECREF(fields[1]);
    Py_XDECREF(fields[2]);
    Py_XDECREF(fields[4]);
    Py_XDECREF(fields[5]);
    Py_XDECREF(fields[7]);
    return result;
}

static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "setup() takes 4 arguments");
        return NULL;
    }
    Py_XSETREF(trade_type, Py_NewRef(args[0]));
    Py_XSETREF(buy, Py_NewRef(args[1]));
    Py_XSETREF(sell, Py_NewRef(args[2]));
    Py_XSETREF(fallback, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(trade_type, buy, sell, fallback): once, before parse()"},
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(venue, raw, ts_recv) -> list[Trade]: a trade frame, as fallback() would parse it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "streams._trade_frame", "Binance trade frames read in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__trade_frame(void)
{
    return PyModule_Create(&module);
}
