"""safetensors files without torch: headers, values with numpy, byte ranges and kernel copies."""
