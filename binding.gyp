{
  "targets": [
    {
      "target_name": "vhost_native",
      "sources": ["native/vhost_native.cc", "native/uring.cc"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-fno-exceptions"],
      "defines": ["NAPI_VERSION=8"],
      "libraries": ["-lutil"]
    }
  ]
}
