"""`aidi appkey`: a platform engineer issues, lists and revokes a team's APP KEYs with their own kubeconfig.

An APP KEY is the only cluster credential a team member holds (docs/security.md): a ServiceAccount
``appkey-<id>`` in the team's namespace bound to the Role ``aidi-team``, and a token for it that expires.
The console's personal centre issues the same keys; this command is how the first one reaches a team.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aidi import cmdline

DAY = 86400
EPILOG = """\
examples:
  aidi appkey issue -n team-a --description "alice's laptop" --ttl 2592000
  aidi appkey issue -n team-a --queue gpu-a100 --json
  aidi appkey list -n team-a
  aidi appkey revoke -n team-a 3f9c01ab

`issue` prints the token APPID:APPKEY alone on stdout (the only time it is shown): hand it over a
secret channel; the member runs `traincli init -t - --server URL --certificate-authority CA` and pastes
it. `revoke` deletes the key's ServiceAccount: the API server refuses the token within seconds.
Uses your kubeconfig, which needs the rights of the console's Role (docs/console.md, "RBAC").
"""


def _issuer(args: argparse.Namespace) -> Any:
    from aidi.cluster.gpucluster import Cluster, ResolvedCluster
    from aidi.cluster.kube import api_client
    from aidi.console.appkeys import AppKeyIssuer
    from aidi.errors import UsageError

    try:
        api, _ = api_client(ResolvedCluster("kubeconfig", Cluster(), Path("kubeconfig")))
    except UsageError:
        raise UsageError("aidi appkey acts with your own kubeconfig (KUBECONFIG, else ~/.kube/config), and found "
                         "none usable; it needs the rights of the console's Role in the team namespace "
                         "(docs/console.md, \"RBAC\")") from None
    return AppKeyIssuer(api, args.team_role, getattr(args, "ttl", 90 * DAY))


def run_issue(args: argparse.Namespace) -> int:
    import getpass

    issuer = _issuer(args)
    try:
        issued = issuer.issue(args.namespace, queue=args.queue, created_by=f"aidi appkey ({getpass.getuser()})",
                              description=args.description)
    finally:
        issuer.close()
    if args.json:
        cmdline.print_json({**issued.key.to_json(), "token": issued.token})
        return 0
    print(f"APP KEY {issued.key.id} for {issued.key.appid}, expires {issued.key.expires} "
          f"(revoke: aidi appkey revoke -n {args.namespace} {issued.key.id})", file=sys.stderr)
    print(issued.token)
    return 0


def run_list(args: argparse.Namespace) -> int:
    issuer = _issuer(args)
    try:
        keys = issuer.list(args.namespace)
    finally:
        issuer.close()
    if args.json:
        cmdline.print_json([k.to_json() for k in keys])
        return 0
    if not keys:
        print(f"no APP KEYs in {args.namespace}; issue one with `aidi appkey issue -n {args.namespace}`")
        return 0
    cmdline.print_table(("ID", "APPID", "CREATED BY", "CREATED", "EXPIRES", "DESCRIPTION"),
                        [(k.id, k.appid, k.created_by, k.created or "-", k.expires or "-", k.description or "-")
                         for k in keys])
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    issuer = _issuer(args)
    try:
        issuer.revoke(args.namespace, args.id)
    finally:
        issuer.close()
    print(f"APP KEY {args.id} in {args.namespace} revoked: its ServiceAccount and RoleBinding are deleted")
    return 0


def _ttl(text: str) -> int:
    seconds = int(text)
    if seconds < 600:
        raise argparse.ArgumentTypeError("the lifetime is at least 600 seconds")
    return seconds


def add_commands(subparsers: Any) -> None:
    family = subparsers.add_parser("appkey", help="issue, list and revoke a team's APP KEYs (platform engineers)",
                                   description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = family.add_subparsers(dest="appkey_command", metavar="COMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-n", "--namespace", required=True, help="the team's namespace")
        parser.add_argument("--team-role", default="aidi-team", help="the Role keys are bound to [%(default)s]")
        cmdline.add_json(parser)

    issue = cmdline.subcommand(sub, "issue", run_issue, "issue an APP KEY (prints APPID:APPKEY once)", epilog=EPILOG)
    common(issue)
    issue.add_argument("--queue", help="a Kueue LocalQueue: the appid becomes NAMESPACE/QUEUE")
    issue.add_argument("--description", default="", help="who or what the key is for (shown in lists)")
    issue.add_argument("--ttl", type=_ttl, default=90 * DAY, metavar="S",
                       help="lifetime in seconds [%(default)s = 90 days; the API server may shorten it]")
    common(cmdline.subcommand(sub, "list", run_list, "list a team's APP KEYs (never their tokens)", epilog=EPILOG))
    revoke = cmdline.subcommand(sub, "revoke", run_revoke, "revoke an APP KEY at once", epilog=EPILOG)
    common(revoke)
    revoke.add_argument("id", help="the key's id (`aidi appkey list`)")
