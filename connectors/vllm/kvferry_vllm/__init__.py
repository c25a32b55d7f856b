"""kvferry_vllm: vLLM's KV connector on the kvferry daemon (`KvferryConnector`, in
kvferry_vllm.connector, which vLLM's factory imports through kv_connector_module_path)."""
