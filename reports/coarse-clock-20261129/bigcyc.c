#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
int main(int argc,char**argv){
  int live=argc>1?atoi(argv[1]):2; long iters=argc>2?atol(argv[2]):2000000; int full=argc>3?atoi(argv[3]):0;
  void *slot[64]={0}; uint64_t s=88172645463325252ull;
  for(long i=0;i<iters;i++){
    s^=s<<13;s^=s>>7;s^=s<<17;
    int j=s%live; size_t n=(64<<10)+ (s>>20)%(192<<10);
    free(slot[j]); char*p=malloc(n); if(full) memset(p,1,n); else {p[0]=1;p[n/2]=1;p[n-1]=1;} slot[j]=p;
  }
  for(int j=0;j<live;j++) free(slot[j]);
  return 0;
}
