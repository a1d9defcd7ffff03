"""A stand-in for a robot's control loop: a periodic task in a process of its own that records
how late each period starts.

A real controller wakes at a fixed rate, reads sensors, computes and writes commands; what a
model running beside it can break is the wake-up, so this measures lateness = the time each
period actually starts minus the time it was due (absolute deadlines, so one late period does not
shift the next), and spends `work_ms` of CPU per period as the control computation would.

    python bench/control_loop.py --rate 100 --seconds 10 --work-ms 1.0
prints one JSON object: periods, missed (lateness above one period), lateness p50/p99/max in ms
(and every lateness with --samples).
"""

import argparse
import json
import statistics
import time
from typing import Dict, List


def run(rate: float, seconds: float, work_ms: float) -> List[float]:
    """Lateness of each period start, in seconds."""
    period = 1.0 / rate
    lateness = []
    due = time.monotonic() + period
    end = due + seconds
    while due < end:
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        started = time.monotonic()
        lateness.append(max(0.0, started - due))
        busy_until = started + work_ms / 1000
        while time.monotonic() < busy_until:
            pass
        due += period
    return lateness


def summary(lateness: List[float], rate: float) -> Dict[str, float]:
    ordered = sorted(lateness)

    def percentile(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] * 1000

    return {'periods': len(ordered), 'missed': sum(1 for x in ordered if x > 1.0 / rate),
            'p50_ms': percentile(0.5), 'p99_ms': percentile(0.99), 'max_ms': ordered[-1] * 1000,
            'mean_ms': statistics.fmean(ordered) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rate', type=float, default=100.0, help='periods per second')
    parser.add_argument('--seconds', type=float, default=10.0, help='how long to run')
    parser.add_argument('--work-ms', type=float, default=1.0, help='CPU spent per period')
    parser.add_argument('--samples', action='store_true',
                        help='also print every lateness (lateness_ms), for plots')
    args = parser.parse_args()
    lateness = run(args.rate, args.seconds, args.work_ms)
    figures: Dict[str, object] = dict(summary(lateness, args.rate))
    if args.samples:
        figures['lateness_ms'] = [round(x * 1000, 4) for x in lateness]
    print(json.dumps(figures))


if __name__ == '__main__':
    main()
