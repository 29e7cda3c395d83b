"""The baseline for ``benchmarks.bench``: the smallest honest consume → LLM → produce loop.

One aiokafka consumer (its own group, auto-commit) and one ``AIOKafkaProducer`` (``acks=all``);
each message becomes a task, at most ``--in-flight`` at once (an ``asyncio.Semaphore``), that
parses the ticket, makes the same chat call Sluice's triage agent makes (same system prompt, user
message, JSON-schema response format, ``max_tokens``, logprobs), validates the answer and writes a
small JSON result with the input's coordinates, waiting for the broker's ack. The call goes the
way Sluice's LLM client sends it (the SDK's aiohttp transport, the request body built once and
sent with ``client.post``), so the comparison measures the framework, not a faster HTTP path.
No retries, no re-asks, no dead letters beyond a one-line error record, no at-least-once: what is
left is the cost of Kafka, the HTTP call and JSON, which Sluice cannot go below.

Run by the bench as a subprocess, so its CPU and memory are measured like a worker's::

    python -m benchmarks.raw_loop --input tickets.received.x --output tickets.review.x \
        --group raw-x --base-url http://127.0.0.1:8099/v1 --in-flight 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

from agents.llm import response_format
from agents.prompt import load_prompt
from agents.triage import MAX_TOKENS, PROMPT_VERSION, TriageAnswer, user_message
from schemas.events import TicketReceived


async def run(args: argparse.Namespace) -> None:
    system = load_prompt(PROMPT_VERSION)
    fmt = response_format(TriageAnswer)
    client = AsyncOpenAI(
        base_url=args.base_url,
        api_key="bench",
        max_retries=0,
        timeout=30.0,
        http_client=DefaultAioHttpClient(timeout=30.0),
    )
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await producer.start()
    await consumer.start()
    slots = asyncio.Semaphore(args.in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(msg: Any) -> None:
        source = {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
        try:
            ticket = TicketReceived.model_validate_json(msg.value)
            body = {
                "model": args.model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user_message(ticket)},
                ],
                "response_format": fmt,
                "temperature": 0,
                "max_tokens": MAX_TOKENS,
                "logprobs": True,
                "top_logprobs": 5,
            }
            response = await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
            answer = TriageAnswer.model_validate_json(response.choices[0].message.content or "")
            out: dict[str, Any] = {
                "source": source,
                "ticket_id": ticket.ticket_id,
                "triage": answer.model_dump(mode="json"),
            }
        except Exception as exc:  # the baseline has no dead letters: one line, same topic
            out = {"source": source, "error": type(exc).__name__}
        try:
            await (await producer.send(args.output, json.dumps(out).encode(), key=msg.key))
        finally:
            slots.release()

    try:
        async for msg in consumer:
            await slots.acquire()
            task = asyncio.create_task(handle(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.raw_loop", description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--in-flight", type=int, default=256)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
