{
  "variables": {
    "ucx%": "<!(node scripts/native-config.cjs ucx)"
  },
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
      "libraries": ["-lpthread", "-ldl"],
      "defines": ["NAPI_VERSION=8", "<!@(node scripts/native-config.cjs defines)"]
    }
  ],
  "conditions": [
    ["ucx==1", {
      "targets": [
        {
          "target_name": "kvferry_ucx",
          "type": "loadable_module",
          "sources": ["<!@(node scripts/native-config.cjs ucx_sources)"],
          "include_dirs": ["native"],
          "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-Wall", "-Wextra"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
          "libraries": ["-lpthread", "<!@(node scripts/native-config.cjs ucx_libraries)"],
          "defines": ["KVFERRY_HAVE_UCX=1"]
        }
      ]
    }]
  ]
}
