#!/usr/bin/env python3
"""Drives moto's SNS/SQS emulator (moto_server) for the tests and the demo.

Run with _build/venv/bin/python (`make venv` installs moto and boto3 there); used by
test/support/sns_emulator.erl. Every subcommand prints one JSON document to stdout; on
failure it prints a message to stderr and exits non-zero.

  setup    --endpoint URL --region R --topics a,b,c
           For each topic: the SNS topic, an SQS queue <topic>-queue and an sqs
           subscription of the queue to the topic (RawMessageDelivery off, so each
           SQS body is the SNS JSON envelope with its MessageAttributes). Idempotent.
           Prints {"a": {"topic_arn": ..., "queue_url": ...}, ...}.
  receive  --endpoint URL --region R --queue-url U --count N --timeout SECONDS
           Long-polls (and deletes) until N messages or the timeout; once N are in,
           waits 0.5 s more and takes any extra ones too (so duplicates show).
           Prints a list of the SQS bodies, each parsed as JSON (the SNS envelope:
           Type, MessageId, TopicArn, Message, MessageAttributes, ...); a body that
           is not JSON is given as {"Body": <text>}.
  receive-all --endpoint URL --region R --queue URL=N [--queue URL=N ...] --timeout SECONDS
           As receive, for several queues in one run (one deadline for all): takes
           N messages from each queue, then, 0.5 s later, any extra ones from each.
           Prints {"<queue url>": [<SQS body>, ...], ...}.
  purge    --endpoint URL --region R --queue-url U
           Receives and deletes until the queue is empty; prints {"purged": N}.
  create-user --endpoint URL --region R --user NAME
           IAM user NAME with an access key and an allow-everything inline policy,
           for moto's authenticating mode (see sns_emulator.erl); prints
           {"access_key_id": ..., "secret_access_key": ...}. Idempotent only in
           that it reuses the user (each run adds an access key).

Credentials: --access-key/--secret-key, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
else dummy ones (moto checks none unless started with INITIAL_NO_AUTH_ACTION_COUNT).
"""

import argparse
import json
import os
import sys
import time

DUMMY_ACCESS_KEY = "AKIAEXAMPLEEXAMPLE00"
DUMMY_SECRET_KEY = "secret"
EXTRA_WAIT_S = 0.5


def client(args, service):
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=args.endpoint,
        region_name=args.region,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        # No session token from the environment sneaks in: moto would then treat the
        # key as an assumed role's.
        aws_session_token=None,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60),
    )


def cmd_setup(args):
    sns = client(args, "sns")
    sqs = client(args, "sqs")
    topics = [t for t in args.topics.split(",") if t]
    if not topics and not args.bare_topics:
        raise ValueError("--topics names no topic")
    result = {}
    for topic in [t for t in (args.bare_topics or "").split(",") if t]:
        result[topic] = {"topic_arn": sns.create_topic(Name=topic)["TopicArn"], "queue_url": None}
    for topic in topics:
        topic_arn = sns.create_topic(Name=topic)["TopicArn"]
        queue_url = sqs.create_queue(QueueName=f"{topic}-queue")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        if not subscribed(sns, topic_arn, queue_arn):
            sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes={"RawMessageDelivery": "false"},
            )
        result[topic] = {"topic_arn": topic_arn, "queue_url": queue_url}
    return result


def subscribed(sns, topic_arn, queue_arn):
    pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
    return any(
        sub["Protocol"] == "sqs" and sub["Endpoint"] == queue_arn
        for page in pages
        for sub in page.get("Subscriptions", [])
    )


def receive_batch(sqs, queue_url, wait_s):
    response = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait_s,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
    )
    messages = response.get("Messages", [])
    if messages:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
        ]
        failed = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries).get(
            "Failed", []
        )
        if failed:
            raise RuntimeError(f"DeleteMessageBatch failed for {failed}")
    return messages


def parse_body(body):
    try:
        return json.loads(body)
    except ValueError:
        return {"Body": body}


def receive_until(sqs, queue_url, count, deadline):
    """Messages from the queue (deleted) until count arrived or the deadline passed."""
    messages = []
    while len(messages) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # WaitTimeSeconds is whole seconds, 0..20; under a second left: short polls.
        wait_s = min(20, int(remaining))
        batch = receive_batch(sqs, queue_url, wait_s)
        if not batch and wait_s == 0:
            time.sleep(min(remaining, 0.1))
        messages += batch
    return messages


def receive_rest(sqs, queue_url):
    """Whatever is in the queue now (deleted): the extra messages, e.g. duplicates."""
    messages = []
    while True:
        extra = receive_batch(sqs, queue_url, 0)
        if not extra:
            return messages
        messages += extra


def cmd_receive(args):
    if args.count < 0 or args.timeout < 0:
        raise ValueError("--count and --timeout must not be negative")
    sqs = client(args, "sqs")
    messages = receive_until(sqs, args.queue_url, args.count, time.monotonic() + args.timeout)
    if len(messages) >= args.count:
        time.sleep(EXTRA_WAIT_S)
        messages += receive_rest(sqs, args.queue_url)
    return [parse_body(m["Body"]) for m in messages]


def queue_and_count(text):
    url, sep, count = text.rpartition("=")
    if not sep or not url or not count.isdigit():
        raise argparse.ArgumentTypeError(f"not URL=COUNT: {text}")
    return url, int(count)


def cmd_receive_all(args):
    if not args.queue or args.timeout < 0:
        raise ValueError("receive-all needs --queue URL=COUNT and a timeout >= 0")
    sqs = client(args, "sqs")
    deadline = time.monotonic() + args.timeout
    result = {url: receive_until(sqs, url, count, deadline) for url, count in args.queue}
    time.sleep(EXTRA_WAIT_S)
    for url, _count in args.queue:
        result[url] += receive_rest(sqs, url)
    return {url: [parse_body(m["Body"]) for m in messages] for url, messages in result.items()}


def cmd_purge(args):
    sqs = client(args, "sqs")
    purged = 0
    while True:
        batch = receive_batch(sqs, args.queue_url, 0)
        if not batch:
            return {"purged": purged}
        purged += len(batch)


def cmd_create_user(args):
    iam = client(args, "iam")
    try:
        iam.create_user(UserName=args.user)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    iam.put_user_policy(
        UserName=args.user,
        PolicyName="allow-all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=args.user)["AccessKey"]
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", required=True, help="moto_server URL")
    common.add_argument("--region", required=True)
    common.add_argument(
        "--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID") or DUMMY_ACCESS_KEY
    )
    common.add_argument(
        "--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY") or DUMMY_SECRET_KEY
    )
    top = argparse.ArgumentParser(description="moto SNS/SQS emulator helper")
    sub = top.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", parents=[common])
    setup.add_argument("--topics", default="", help="comma-separated topic names")
    setup.add_argument(
        "--bare-topics", default="", help="topics created without a subscribed queue"
    )
    setup.set_defaults(run=cmd_setup)
    receive = sub.add_parser("receive", parents=[common])
    receive.add_argument("--queue-url", required=True)
    receive.add_argument("--count", type=int, required=True)
    receive.add_argument("--timeout", type=float, required=True, help="seconds")
    receive.set_defaults(run=cmd_receive)
    receive_all = sub.add_parser("receive-all", parents=[common])
    receive_all.add_argument(
        "--queue", action="append", type=queue_and_count, help="URL=COUNT (repeatable)"
    )
    receive_all.add_argument("--timeout", type=float, required=True, help="seconds")
    receive_all.set_defaults(run=cmd_receive_all)
    purge = sub.add_parser("purge", parents=[common])
    purge.add_argument("--queue-url", required=True)
    purge.set_defaults(run=cmd_purge)
    create_user = sub.add_parser("create-user", parents=[common])
    create_user.add_argument("--user", required=True)
    create_user.set_defaults(run=cmd_create_user)
    return top


def main():
    args = parser().parse_args()
    try:
        result = args.run(args)
    except Exception as e:  # every failure: one line on stderr, exit 1
        print(f"sns_emulator.py {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
