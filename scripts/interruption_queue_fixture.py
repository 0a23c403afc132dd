#!/usr/bin/env python3
"""Test fixture for berth's interruption queue (deploy/interruption-queue.yaml) against moto_server.

Run it with the python of .venv (scripts/moto.sh install puts boto3 there, with moto). Every command prints one JSON
document on stdout and exits 0, or prints the error on stderr and exits 1.

    python scripts/interruption_queue_fixture.py [--endpoint URL] [--region REGION] COMMAND ...

    --endpoint URL   moto_server's endpoint; default $BERTH_MOTO_ENDPOINT (required one way or the other)
    --region REGION  default us-east-1

Commands:

    create-stack --cluster-name NAME [--stack-name NAME] [--template PATH]
        CreateStack from the template (default deploy/interruption-queue.yaml) with ClusterName=NAME, as a user
        deploys it (stack name default berth-NAME-interruptions), and wait for CREATE_COMPLETE. Prints
        {"StackName", "QueueName", "QueueArn", "QueueUrl" (the stack's Outputs), "QueueAttributes" (GetQueueAttributes
        All), "Rules": [{"Name", "LogicalId", "EventPattern" (parsed), "State", "Targets": [{"Id", "Arn"}]}],
        "PolicyAppliedByFixture" (see MOTO below)}.

    put-event KIND INSTANCE_ID [--state STATE] [--service SERVICE] [--category CATEGORY]
        PutEvents on the default bus with the event AWS sends for KIND about INSTANCE_ID, in EventBridge's real
        shape (source, detail-type, resources, detail):
          spot-interruption  aws.ec2    "EC2 Spot Instance Interruption Warning"
                             {"instance-id", "instance-action": "terminate"}
          rebalance          aws.ec2    "EC2 Instance Rebalance Recommendation"  {"instance-id"}
          state-change       aws.ec2    "EC2 Instance State-change Notification" {"instance-id", "state": STATE}
                             (STATE default stopping)
          scheduled-change   aws.health "AWS Health Event", detail with eventArn, service (SERVICE, default EC2),
                             eventTypeCode AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED, eventTypeCategory (CATEGORY,
                             default scheduledChange), statusCode, eventRegion, startTime/endTime/lastUpdatedTime
                             (RFC 1123 "Wed, 16 Aug 2023 23:18:51 GMT", as AWS Health writes them),
                             eventDescription, affectedEntities [{"entityValue": INSTANCE_ID}]
        Prints {"EventId", "Source", "DetailType", "Resources", "Detail" (parsed), "Time" (ISO 8601, whole seconds)}.
        The EventId is the "id" of the envelope a rule delivers.

    receive QUEUE_URL [--wait-seconds N]
        Receives every message now in the queue (ReceiveMessage, 10 at a time, until one comes back empty; the first
        waits up to N seconds, default 0), deletes each, and prints [{"MessageId", "Body" (parsed JSON)}].

MOTO (5.x; what differs from AWS, and what this fixture does about it):
  - Real EventBridge refuses PutEvents entries whose source begins with "aws." (NotAuthorizedForSourceException):
    only AWS services emit aws.ec2 and aws.health events. moto accepts them and routes them, which is what makes this
    fixture possible; against AWS, put-event cannot work (use AWS FIS's aws:ec2:send-spot-instance-interruptions to
    provoke a real spot warning).
  - moto's CloudFormation has no AWS::SQS::QueuePolicy: it skips the resource with a warning. create-stack then sets
    the queue's Policy attribute itself with the template's PolicyDocument, resolved (Ref/GetAtt of the queue), and
    reports "PolicyAppliedByFixture": true; were moto to apply it, the fixture would leave it alone. moto's SQS never
    evaluates a queue policy either: events reach the queue with or without it.
  - moto's delivery to SQS leaves "account" out of the envelope (its default input template lacks it); AWS sends it.
  - moto delivers synchronously inside PutEvents: the message is in the queue when put-event returns. AWS delivers
    asynchronously, within about a second.
"""

import argparse
import datetime
import json
import os
import sys
import time
import uuid

import boto3
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEMPLATE = os.path.join(ROOT, "deploy", "interruption-queue.yaml")
# moto's default account.
ACCOUNT = "123456789012"


def clients(args):
    kw = dict(
        endpoint_url=args.endpoint,
        region_name=args.region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    return (lambda service: boto3.client(service, **kw))


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref X -> {"Ref": X}, !GetAtt A.B -> {"Fn::GetAtt": "A.B"}, ...)."""


def _short_form(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else "Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _short_form)


def resolve(node, refs, attrs):
    """Resolves Ref and Fn::GetAtt (of the names in refs and attrs) in a template fragment."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return refs[node["Ref"]]
        if set(node) == {"Fn::GetAtt"}:
            target = node["Fn::GetAtt"]
            target = target.split(".", 1) if isinstance(target, str) else target
            return attrs[tuple(target)]
        return {k: resolve(v, refs, attrs) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, refs, attrs) for v in node]
    return node


def create_stack(args):
    client = clients(args)
    cfn, sqs, events = client("cloudformation"), client("sqs"), client("events")
    with open(args.template) as f:
        body = f.read()
    stack = args.stack_name or f"berth-{args.cluster_name}-interruptions"
    cfn.create_stack(
        StackName=stack,
        TemplateBody=body,
        Parameters=[{"ParameterKey": "ClusterName", "ParameterValue": args.cluster_name}],
    )
    deadline = time.monotonic() + 60
    while True:
        described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        status = described["StackStatus"]
        if status == "CREATE_COMPLETE":
            break
        if not status.endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            events_text = json.dumps(cfn.describe_stack_events(StackName=stack)["StackEvents"], default=str)
            raise SystemExit(f"stack {stack} is {status}: {events_text}")
        time.sleep(0.2)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    url, arn = outputs["QueueUrl"], outputs["QueueArn"]

    template = yaml.load(body, Loader=CfnLoader)
    policy_applied = False
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {})
    if "Policy" not in current:
        # moto's CloudFormation skipped AWS::SQS::QueuePolicy: apply the template's document as the stack would.
        for resource in template["Resources"].values():
            if resource["Type"] == "AWS::SQS::QueuePolicy":
                document = resolve(
                    resource["Properties"]["PolicyDocument"],
                    {"Queue": url},
                    {("Queue", "Arn"): arn},
                )
                sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(document)})
                policy_applied = True
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    rules = []
    resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    for r in resources:
        if r["ResourceType"] != "AWS::Events::Rule":
            continue
        rule = events.describe_rule(Name=r["PhysicalResourceId"])
        targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        rules.append(
            {
                "Name": rule["Name"],
                "LogicalId": r["LogicalResourceId"],
                "EventPattern": json.loads(rule["EventPattern"]),
                "State": rule["State"],
                "Targets": [{"Id": t["Id"], "Arn": t["Arn"]} for t in targets],
            }
        )
    rules.sort(key=lambda r: r["LogicalId"])
    return {
        "StackName": stack,
        "QueueName": outputs["QueueName"],
        "QueueArn": arn,
        "QueueUrl": url,
        "QueueAttributes": attributes,
        "Rules": rules,
        "PolicyAppliedByFixture": policy_applied,
    }


def rfc1123(t):
    return t.strftime("%a, %d %b %Y %H:%M:%S GMT")


def event_for(args, now):
    instance = args.instance_id
    instance_arn = f"arn:aws:ec2:{args.region}:{ACCOUNT}:instance/{instance}"
    if args.kind == "spot-interruption":
        return "aws.ec2", "EC2 Spot Instance Interruption Warning", [instance_arn], {
            "instance-id": instance,
            "instance-action": "terminate",
        }
    if args.kind == "rebalance":
        return "aws.ec2", "EC2 Instance Rebalance Recommendation", [instance_arn], {"instance-id": instance}
    if args.kind == "state-change":
        return "aws.ec2", "EC2 Instance State-change Notification", [instance_arn], {
            "instance-id": instance,
            "state": args.state,
        }
    if args.kind == "scheduled-change":
        code = "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED"
        start = now + datetime.timedelta(days=14)
        suffix = uuid.uuid4().hex[:12].upper()
        # AWS Health's resources are the affected entities themselves (instance ids, not ARNs).
        return "aws.health", "AWS Health Event", [instance], {
            "eventArn": f"arn:aws:health:{args.region}::event/{args.service}/{code}/{code}_{suffix}",
            "service": args.service,
            "eventScopeCode": "ACCOUNT_SPECIFIC",
            "communicationId": uuid.uuid4().hex,
            "lastUpdatedTime": rfc1123(now),
            "statusCode": "upcoming",
            "eventRegion": args.region,
            "eventTypeCode": code,
            "eventTypeCategory": args.category,
            "startTime": rfc1123(start),
            "endTime": rfc1123(start + datetime.timedelta(days=1)),
            "eventDescription": [
                {
                    "language": "en_US",
                    "latestDescription": "EC2 has detected degradation of the underlying hardware hosting your "
                    "Amazon EC2 instance. Due to this degradation your instance could already be unreachable. "
                    "We will stop your instance after the scheduled time.",
                }
            ],
            "affectedEntities": [{"entityValue": instance}],
        }
    raise SystemExit(f"unknown kind {args.kind}")


def put_event(args):
    events = clients(args)("events")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    source, detail_type, resources, detail = event_for(args, now)
    answer = events.put_events(
        Entries=[
            {
                "Time": now,
                "Source": source,
                "DetailType": detail_type,
                "Resources": resources,
                "Detail": json.dumps(detail),
            }
        ]
    )
    entry = answer["Entries"][0]
    if answer.get("FailedEntryCount") or "EventId" not in entry:
        raise SystemExit(f"PutEvents refused the event: {entry}")
    return {
        "EventId": entry["EventId"],
        "Source": source,
        "DetailType": detail_type,
        "Resources": resources,
        "Detail": detail,
        "Time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def receive(args):
    sqs = clients(args)("sqs")
    out = []
    wait = args.wait_seconds
    while True:
        batch = sqs.receive_message(
            QueueUrl=args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait
        ).get("Messages", [])
        wait = 0
        if not batch:
            return out
        for m in batch:
            out.append({"MessageId": m["MessageId"], "Body": json.loads(m["Body"])})
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=m["ReceiptHandle"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", default=os.environ.get("BERTH_MOTO_ENDPOINT"))
    p.add_argument("--region", default="us-east-1")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create-stack")
    c.add_argument("--cluster-name", required=True)
    c.add_argument("--stack-name")
    c.add_argument("--template", default=DEFAULT_TEMPLATE)

    e = sub.add_parser("put-event")
    e.add_argument("kind", choices=["spot-interruption", "rebalance", "state-change", "scheduled-change"])
    e.add_argument("instance_id")
    e.add_argument("--state", default="stopping")
    e.add_argument("--service", default="EC2")
    e.add_argument("--category", default="scheduledChange")

    r = sub.add_parser("receive")
    r.add_argument("queue_url")
    r.add_argument("--wait-seconds", type=int, default=0)

    args = p.parse_args()
    if not args.endpoint:
        p.error("--endpoint or BERTH_MOTO_ENDPOINT is required (this fixture drives moto_server)")
    result = {"create-stack": create_stack, "put-event": put_event, "receive": receive}[args.command](args)
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
