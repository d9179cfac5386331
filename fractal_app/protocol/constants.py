"""Names fixed by the Golem Task API (shared/PROTOCOL.md): folders, env ids, TLS files."""

# Folders the node creates inside each task's work directory.
TASK_INPUTS_DIR = "task_inputs"
SUBTASK_INPUTS_DIR = "subtask_inputs"
TASK_OUTPUTS_DIR = "task_outputs"
SUBTASK_OUTPUTS_DIR = "subtask_outputs"

# Where the node bind-mounts the work directory inside the container (relative to "/").
WORK_DIR = "golem/work"

# Execution environments a task can ask for (CreateTaskReply.env_id).
DOCKER_CPU_ENV_ID = "docker_cpu"
DOCKER_GPU_ENV_ID = "docker_gpu"

# When all three are in the work directory the server speaks mutual TLS; otherwise plaintext.
SERVER_KEY_FILE = "task_api_server_key.pem"
SERVER_CERT_FILE = "task_api_server_cert.pem"
CLIENT_CERT_FILE = "task_api_client_cert.pem"
TLS_FILES = (SERVER_KEY_FILE, SERVER_CERT_FILE, CLIENT_CERT_FILE)
