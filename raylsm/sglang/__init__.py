"""The SGLang HiCache L3 adapter: the only package that imports sglang (and torch).

Load it in SGLang with:
    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "raylsm",
        "module_path": "raylsm.sglang.backend", "class_name": "RayLSMStorage",
        "interface_v1": 1, "hicache_storage_pass_prefix_keys": true}'
"""
