"""producer.plans.together_problems: what `plan apply` refuses about a together group from its
dry run, before anything is stored or released."""
import pytest

from producer import plan_file
from producer.migrations import RequestError
from producer.plans import together_problems
from producer.schedule import GroupSpec, HostLimits, Job, simulate

PLAN = ("name: p\ngroups:\n  - name: app\n    switchover: together\n    prepared_wait: 30m\n    vms:\n"
        "      - {vm: small, from: hv1, to: hv2}\n      - {vm: big, from: hv2, to: hv3}\n")


def dry_run_of(plan, copy_mb):
    """What dry_run() gives apply, from a simulation of the members' copies (10 MB/s)."""
    jobs = [Job(key=m.key, group=m.group, source=m.source, destination=m.destination, copy_bytes=mb * 1e6,
                copy_bps=10e6, downtime_s=2.0, setup_s=1.0, gate_s=3.0, finish_s=1.0)
            for m, mb in zip(plan.members(), copy_mb, strict=True)]
    groups = [GroupSpec(g.name, g.after, True, g.prepared_wait_s) for g in plan.groups]
    res = simulate(jobs, groups, {h: HostLimits(2, 2) for h in ("hv1", "hv2", "hv3")}, 4)
    return {"problems": res.problems, "members": [{"key": m.key, "group": m.group, "vm": m.vm}
                                                  for m in plan.members()]}


def test_apply_refuses_a_together_group_predicted_to_roll_back_at_its_barrier_and_names_the_fix():
    plan = plan_file.parse(PLAN, hosts=["hv1", "hv2", "hv3"])
    together_problems(plan, dry_run_of(plan, [100, 1000]))  # ready 90 s apart: fine
    with pytest.raises(RequestError, match=r"^group app switches over together but its members are predicted "
                                           r"ready 1h00m apart, more than the 30m00s .*prepared_wait"):
        together_problems(plan, dry_run_of(plan, [100, 36_100]))
