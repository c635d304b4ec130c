from fastapi import BackgroundTasks, FastAPI
from fastapi_taskflow import TaskAdmin, TaskManager

task_manager = TaskManager(snapshot_db="tasks.db", snapshot_interval=30.0)
app = FastAPI()
TaskAdmin(app, task_manager, auto_install=True)

@task_manager.task(retries=3, delay=1.0, backoff=2.0)
def send_email(address: str) -> None: ...

@task_manager.task(retries=1, delay=0.5)
async def process_webhook(payload: dict) -> None: ...

@app.post("/signup")
def signup(email: str, background_tasks: BackgroundTasks):
    task_id = background_tasks.add_task(send_email, address=email)
    return {"task_id": task_id}
