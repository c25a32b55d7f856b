{
  "targets": [
    {
      "target_name": "kvferry_native",
      "sources": [
        "native/binding/addon.cc",
        "<!@(node scripts/native-config.cjs sources)"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-Wall", "-Wextra"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "libraries": ["-lpthread", "<!@(node scripts/native-config.cjs libraries)"],
      "defines": ["NAPI_VERSION=8", "<!@(node scripts/native-config.cjs defines)"]
    }
  ]
}
