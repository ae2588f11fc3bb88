"""What tests (and bench/) share, in one place; test modules import from here, never from one
another or from a conftest.

app             the app in process: settings, a new tenant, the one error shape
api             chat, ask, upload, wait for a job, upload-and-index: for the in-process
                TestClient and for a live server alike (both are httpx clients)
server          `ragtune serve` (or any `ragtune` command) as a child process: started, waited
                for at /readyz, its logs on failure, stopped cleanly
ports           a free port, and waiting for one to close
fake_engine     the fake OpenAI-compatible engine for router tests
postgres        the test PostgreSQL: is it there, a database of one's own
knowledge_base  a real registry, store and worker for ingestion tests
adapter_files   the test base model, a valid peft adapter, each way to break it, archives
random_lora     random strong LoRA adapters (integration tests and bench)
lora_reference  the LoRA product row by row in float64, for the engine plugin's checks
adapter_service the adapter-serving app against fake engines: client, archive, register, files
hostile_service the service the hostile-input tests attack
deploy_files    the deployment files' paths; dev tools, skipped where absent
helm_chart      the chart rendered per values scenario
settings_names  `RAGTUNE_*` names that no Settings field reads
"""
