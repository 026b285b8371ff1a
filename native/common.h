// Shared by the addon's translation units: Node-style errors, argument checks, V8 handle conversion and the
// per-env state. Everything is in namespace vhost; nothing here holds process-wide JS state.
#pragma once

#include <node_api.h>
#include <uv.h>
#include <v8.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <set>
#include <string>

namespace vhost {

// Largest integer a JS number holds exactly.
constexpr double kMaxSafeInteger = 9007199254740991.0;

// ---------------------------------------------------------------------------------------------
// Errors

inline const char* ErrnoName(int err) {
  switch (err) {
#define E(name) \
  case name:    \
    return #name;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(ECHILD) E(EAGAIN)
    E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR)
    E(EINVAL) E(ENFILE) E(EMFILE) E(ENOTTY) E(ETXTBSY) E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS)
    E(EMLINK) E(EPIPE) E(ERANGE) E(ENAMETOOLONG) E(ENOSYS) E(ENOTEMPTY) E(ELOOP) E(EOVERFLOW)
    E(ENOTSOCK) E(EDESTADDRREQ) E(EMSGSIZE) E(EPROTOTYPE) E(ENOPROTOOPT) E(EPROTONOSUPPORT)
    E(EOPNOTSUPP) E(EAFNOSUPPORT) E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN) E(ENETUNREACH)
    E(ECONNABORTED) E(ECONNRESET) E(ENOBUFS) E(EISCONN) E(ENOTCONN) E(ETIMEDOUT)
    E(ECONNREFUSED) E(EHOSTUNREACH) E(EALREADY) E(EINPROGRESS) E(ECANCELED)
#undef E
    default:
      return nullptr;
  }
}

// Throws the Node-style system error; always returns nullptr so callers can `return Throw...`.
// `path` becomes a property (like Node's fs errors); `detail` is appended to the message.
inline napi_value ThrowErrno(napi_env env, const char* syscall, int err, const char* path = nullptr,
                      const char* detail = nullptr) {
  char code_buf[16];
  const char* code = ErrnoName(err);
  if (code == nullptr) {
    snprintf(code_buf, sizeof code_buf, "E%d", err);
    code = code_buf;
  }
  char desc_buf[128];
  const char* desc = strerror_r(err, desc_buf, sizeof desc_buf);  // GNU variant: returns char*
  std::string msg = std::string(syscall) + " failed: " + code + " (" + desc + ")";
  if (path != nullptr) msg += std::string(" '") + path + "'";
  if (detail != nullptr) msg += std::string(": ") + detail;

  napi_value code_v, msg_v, error, errno_v, syscall_v;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_string_utf8(env, msg.c_str(), msg.size(), &msg_v) != napi_ok ||
      napi_create_error(env, code_v, msg_v, &error) != napi_ok ||
      napi_create_int32(env, err, &errno_v) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_v) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_v) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_v) != napi_ok) {
    return nullptr;  // an exception is already pending
  }
  if (path != nullptr) {
    napi_value path_v;
    if (napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &path_v) == napi_ok)
      napi_set_named_property(env, error, "path", path_v);
  }
  napi_throw(env, error);
  return nullptr;
}

inline napi_value ThrowType(napi_env env, const std::string& msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg.c_str());
  return nullptr;
}

inline napi_value ThrowRange(napi_env env, const std::string& msg) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg.c_str());
  return nullptr;
}

// For the (out-of-memory class) case of a Node-API call failing: make sure something is thrown.
inline void EnsureThrown(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info* info = nullptr;
  napi_get_last_error_info(env, &info);
  napi_throw_error(env, nullptr,
                   info != nullptr && info->error_message != nullptr ? info->error_message
                                                                      : "Node-API call failed");
}

#define NAPI_OK(call)          \
  do {                         \
    if ((call) != napi_ok) {   \
      EnsureThrown(env);       \
      return nullptr;          \
    }                          \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Argument helpers: each returns false after throwing.

inline bool ArgNumber(napi_env env, napi_value v, const char* name, double* out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    ThrowType(env, std::string("The \"") + name + "\" argument must be of type number");
    return false;
  }
  napi_get_value_double(env, v, out);
  return true;
}

inline bool ArgInt32(napi_env env, napi_value v, const char* name, int32_t* out) {
  double d;
  if (!ArgNumber(env, v, name, &d)) return false;
  if (!(d >= -2147483648.0 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int64_t>(d))) {
    ThrowRange(env, std::string("The \"") + name + "\" argument must be a 32-bit integer");
    return false;
  }
  *out = static_cast<int32_t>(d);
  return true;
}

// A non-negative integer no larger than max (max <= 2^53 - 1).
inline bool ArgUint(napi_env env, napi_value v, const char* name, double max, uint64_t* out) {
  double d;
  if (!ArgNumber(env, v, name, &d)) return false;
  if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    ThrowRange(env, std::string("The \"") + name + "\" argument must be an integer in [0, " +
                        std::to_string(static_cast<uint64_t>(max)) + "]");
    return false;
  }
  *out = static_cast<uint64_t>(d);
  return true;
}

inline bool ArgBool(napi_env env, napi_value v, const char* name, bool* out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean) {
    ThrowType(env, std::string("The \"") + name + "\" argument must be of type boolean");
    return false;
  }
  napi_get_value_bool(env, v, out);
  return true;
}

// A string without NUL bytes (those would silently truncate a path or name).
inline bool ArgString(napi_env env, napi_value v, const char* name, std::string* out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    ThrowType(env, std::string("The \"") + name + "\" argument must be of type string");
    return false;
  }
  size_t len = 0;
  napi_get_value_string_utf8(env, v, nullptr, 0, &len);
  out->assign(len, '\0');
  napi_get_value_string_utf8(env, v, &(*out)[0], len + 1, &len);
  if (out->find('\0') != std::string::npos) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          (std::string("The \"") + name + "\" argument must not contain null bytes").c_str());
    return false;
  }
  return true;
}

// The bytes of a TypedArray or DataView (data may be null when the length is 0); false, with nothing thrown,
// for anything else. One Node-API call for the usual case, a typed array: napi_get_typedarray_info answers
// napi_invalid_arg for other values without throwing.
inline bool ViewBytes(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  napi_typedarray_type type;
  size_t length;
  void* ptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, nullptr, nullptr) == napi_ok) {
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;
    }
    *data = static_cast<uint8_t*>(ptr);
    *len = length * elem;
    return true;
  }
  bool is = false;
  if (napi_is_dataview(env, v, &is) != napi_ok || !is) return false;
  napi_get_dataview_info(env, v, len, &ptr, nullptr, nullptr);
  *data = static_cast<uint8_t*>(ptr);
  return true;
}

// An argument that must be a TypedArray or DataView: its bytes, or a TypeError thrown.
inline bool ArgBytes(napi_env env, napi_value v, const char* name, uint8_t** data, size_t* len) {
  if (ViewBytes(env, v, data, len)) return true;
  ThrowType(env, std::string("The \"") + name + "\" argument must be a Uint8Array");
  return false;
}

inline bool ArgFunction(napi_env env, napi_value v, const char* name) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_function) {
    ThrowType(env, std::string("The \"") + name + "\" argument must be of type function");
    return false;
  }
  return true;
}

// Fetch exactly N arguments (missing ones are undefined and fail their type check).
template <size_t N>
inline bool Args(napi_env env, napi_callback_info info, napi_value (&argv)[N], napi_value* self = nullptr,
          void** data = nullptr) {
  size_t argc = N;
  return napi_get_cb_info(env, info, &argc, argv, self, data) == napi_ok;
}

inline napi_value Int(napi_env env, int64_t n) {
  napi_value v;
  if (napi_create_int64(env, n, &v) != napi_ok) return nullptr;
  return v;
}

inline napi_value Undefined(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

inline napi_value Bool(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}
// ---------------------------------------------------------------------------------------------
// mmap as an external SharedArrayBuffer.
//
// Node-API cannot wrap foreign memory in a SharedArrayBuffer, so this one step uses V8 directly.
// In Node a napi_value is a v8::Local<v8::Value> reinterpreted (both are one pointer to a handle
// slot; see v8impl::JsValueFromV8LocalValue in Node's js_native_api_v8.h), so converting is a copy.

static_assert(sizeof(napi_value) == sizeof(v8::Local<v8::Value>), "napi_value must be a v8::Local");

inline v8::Local<v8::Value> ToV8(napi_value v) {
  v8::Local<v8::Value> local;
  memcpy(static_cast<void*>(&local), &v, sizeof v);
  return local;
}

inline napi_value FromV8(v8::Local<v8::Value> local) {
  napi_value v;
  memcpy(&v, static_cast<const void*>(&local), sizeof v);
  return v;
}


// ---------------------------------------------------------------------------------------------
// Per-env state (one per isolate: the main thread and each worker).

struct Watcher;
struct Ring;

struct EnvData {
  napi_env env = nullptr;
  napi_ref ctor = nullptr;              // FdWatcher class
  napi_ref ring_ctor = nullptr;         // IoUring class
  napi_ref cb_key = nullptr;            // Symbol under which a handle's callback is stored
  std::set<Watcher*> live;              // open, not yet closing
  std::set<Ring*> rings;                // open io_uring instances
  size_t closing = 0;                   // uv_close issued, close callback pending
  bool tearing_down = false;
  napi_async_cleanup_hook_handle cleanup = nullptr;
};

// For uv close callbacks: one handle fewer is closing; frees `d` when the env's teardown waits for it.
// Touches no Node-API (the env may be gone).
void EnvHandleClosed(EnvData* d);

// io_uring (uring.cc): define `ioUring` on exports; close every ring at env teardown.
bool UringInit(napi_env env, EnvData* d, napi_value exports);
void UringTeardown(EnvData* d);

}  // namespace vhost
