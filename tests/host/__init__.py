"""A real ComfyUI server for tests: preparation (``harness.prepare_host``), the server and client
(``harness.ComfyHost``) and the pytest fixtures (``fixtures.comfy_host``)."""
