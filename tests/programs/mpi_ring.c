/* mpi_ring.c: two or more MPI ranks passing a value around a ring and
 * summing with MPI_Allreduce every step (Open MPI under `mpirun -np 2`:
 * its ranks talk over TCP and shared memory, and each listens on one port
 * over IPv4 and IPv6).
 *
 * Rank 0 prints "step N ring R sum S" each step and "final H"; the values
 * depend on every message so far. Built with mpicc, not by the harness.
 *
 * Usage: mpi_ring [STEPS [PAUSE_MS]]
 */
#include <mpi.h>
#include <string.h>

#include "common.h"

int main(int argc, char **argv)
{
	MPI_Init(&argc, &argv);
	int rank, size;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	uint64_t state = mix64(0x1000 + (uint64_t)rank), h = 0;
	/* A larger message too, so that both eager and rendezvous paths run. */
	static uint64_t big[16384], bigin[16384];
	int next = (rank + 1) % size, prev = (rank + size - 1) % size;
	for (int step = 1; step <= steps; step++) {
		uint64_t token = 0;
		if (rank == 0) {
			token = mix64(state ^ (uint64_t)step);
			MPI_Send(&token, 1, MPI_UINT64_T, next, step, MPI_COMM_WORLD);
			MPI_Recv(&token, 1, MPI_UINT64_T, prev, step, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		} else {
			MPI_Recv(&token, 1, MPI_UINT64_T, prev, step, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
			token = mix64(token + state);
			MPI_Send(&token, 1, MPI_UINT64_T, next, step, MPI_COMM_WORLD);
		}
		for (int i = 0; i < 16384; i++)
			big[i] = mix64(state + (uint64_t)i);
		MPI_Sendrecv(big, 16384, MPI_UINT64_T, next, 1000000 + step, bigin, 16384, MPI_UINT64_T, prev,
			     1000000 + step, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		uint64_t mine = bigin[step % 16384] ^ token, sum = 0;
		MPI_Allreduce(&mine, &sum, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		state = mix64(state ^ sum);
		h = mix64(h ^ sum ^ token);
		if (rank == 0) {
			printf("step %d ring %016llx sum %016llx\n", step, (unsigned long long)token,
			       (unsigned long long)sum);
			fflush(stdout);
		}
		sleep_ms(step_pause_ms(step, pause));
	}
	if (rank == 0)
		printf("final %016llx\n", (unsigned long long)h);
	fflush(stdout);
	MPI_Finalize();
	return 0;
}
