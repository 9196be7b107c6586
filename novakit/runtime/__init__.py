"""NovaKit's runtime machinery: what it runs beyond plain Django, each piece measured.

inference.py (the inference API's handler), lifespan.py (start-up and
shutdown), middleware.py (the inference chain's event-loop middleware),
db.py (the database executor), batching.py (batches by arrival),
scripts.py (Redis script pipelines), redis.py (the Redis clients) and
serve.py and worker.py (the process manager: gunicorn and its uvicorn worker).
README.md lists what each bought and how to
turn it off.
"""
